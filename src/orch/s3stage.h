/* Staging through S3 data stores: training data in, results out. */
#ifndef FFDL_ORCH_S3STAGE_H
#define FFDL_ORCH_S3STAGE_H

#include <jansson.h>
#include <stdint.h>
#include <uv.h>

/* CODE is NULL on success, else "C103" (S3 refused the credentials) or the
 * FAIL_CODE given; MESSAGE carries S3's own code and message, never a secret.
 * On success MESSAGE is NULL, or a warning for the job's user (a download
 * that found no object). */
typedef void (*ffdl_s3stage_cb)(void *ud, const char *code, const char *message);
/* Bytes moved so far (TOTAL 0 while unknown). STATE is FFDL_PROGRESS_*
 * (core/progress.h): RUNNING or RETRYING while it runs, then DONE or FAILED
 * once, at the end. */
typedef void (*ffdl_s3stage_progress_cb)(void *ud, const char *what, uint64_t done, uint64_t total,
                                         int state);

/* One running download or upload. */
typedef struct ffdl_s3stage ffdl_s3stage;

/* Whether a spec data store (borrowed) is staged through S3. */
int ffdl_s3stage_is_s3(const json_t *store);
/* The bucket that STORE's results go to (training_results.container,
 * borrowed) when it is an S3 store that has one, else NULL. */
const char *ffdl_s3stage_results_bucket(const json_t *store);

/* Downloads training_data.container (optionally under training_data.prefix)
 * of STORE into DIR. Returns 0 and calls DONE once, or fails at once. *RUNNING
 * (when RUNNING is not NULL) is the download until DONE is called. */
int ffdl_s3stage_download(uv_loop_t *loop, const json_t *store, const char *dir,
                          ffdl_s3stage_progress_cb progress, ffdl_s3stage_cb done, void *ud,
                          ffdl_s3stage **running);
/* Checks, before a job trains, that STORE's training_results.container can
 * be listed under PREFIX/ (it exists, the credentials work): DONE gets NULL,
 * or "C103" or "S303" with S3's code and the bucket. Returns 0 and calls DONE
 * once, or fails at once; *RUNNING as for ffdl_s3stage_download. */
int ffdl_s3stage_check_results(uv_loop_t *loop, const json_t *store, const char *prefix,
                               ffdl_s3stage_cb done, void *ud, ffdl_s3stage **running);
/* Stops a download or a check before its end (a halted job): its DONE comes
 * soon from the loop, with its failure code and a message that says it was
 * canceled; files already complete stay in DIR, a partial one is removed. */
void ffdl_s3stage_cancel(ffdl_s3stage *stage);
/* Uploads the tree RESULTS to training_results.container under PREFIX/,
 * after aborting the incomplete multipart uploads that an earlier run left
 * there (each logged; a store that cannot list them is a warning). */
int ffdl_s3stage_upload(uv_loop_t *loop, const json_t *store, const char *prefix,
                        const char *results, ffdl_s3stage_progress_cb progress,
                        ffdl_s3stage_cb done, void *ud);

#endif
