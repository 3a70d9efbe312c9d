/*
 * The orchestrator core: the job state machine, the scheduling cycle and
 * failure handling, on one libuv loop. Used the same way by ffdl-run (the
 * embedded default) and by the server.
 *
 * QUEUED -> PENDING -> DOWNLOADING -> PROCESSING -> STORING -> COMPLETED
 * and FAILED or HALTED from any state. A retried job goes back to QUEUED.
 */
#ifndef FFDL_ORCH_ORCH_H
#define FFDL_ORCH_ORCH_H

#include "backend/backend.h"
#include "orch/cluster.h"
#include "policy/generation.h"
#include "store/jobstore.h"

#include <jansson.h>
#include <uv.h>

typedef struct ffdl_orch ffdl_orch;

typedef struct {
  void (*on_transition)(void *ud, const char *job_id, const char *status, const char *reason,
                        const char *error_code);
  /* Why a queued job waits; called when the reason changes. */
  void (*on_waiting)(void *ud, const char *job_id, const char *reason);
  void (*on_line)(void *ud, const char *job_id, int learner, const char *line, size_t len);
  void (*on_metric)(void *ud, const char *job_id, const json_t *record);
  /* The job reached COMPLETED, FAILED or HALTED; its job.json is written. */
  void (*on_end)(void *ud, const char *job_id, const char *status);
  /* A long transfer (S3 staging or storing) moved DONE of TOTAL bytes; STATE
   * is FFDL_PROGRESS_* (core/progress.h): running, retrying, done, failed. */
  void (*on_progress)(void *ud, const char *job_id, const char *what, uint64_t done, uint64_t total,
                      int state);
} ffdl_orch_observer;

typedef struct {
  uv_loop_t *loop;
  ffdl_jobstore *store;   /* borrowed */
  ffdl_generation *gen;   /* borrowed: the active policy generation */
  ffdl_backend *backend;  /* borrowed */
  ffdl_cluster *cluster;  /* borrowed */
  const char *home;       /* work directories: <home>/jobs/<id>/ */
  const char *results;    /* the local results store: <results>/<id>/ */
  const char *root;       /* resolves relative interpreter paths in frameworks.lua */
  unsigned halt_grace_ms; /* SIGTERM to SIGKILL on halt; 0 means 3000 */
  const ffdl_orch_observer *observer;
  void *observer_ud;
} ffdl_orch_opts;

int ffdl_orch_new(const ffdl_orch_opts *opts, ffdl_orch **out);
/* Frees the orchestrator; call once no job is active. */
void ffdl_orch_free(ffdl_orch *o);

/*
 * Submits a validated SPEC (borrowed) with the model code in MODEL_DIR
 * (may be NULL). Writes the new id to ID (at least 64 bytes). A spec this
 * backend cannot run at all (a framework not installed here) is refused
 * with *err (caller frees) and no job is created.
 */
int ffdl_orch_submit(ffdl_orch *o, const json_t *spec, const char *model_dir, char *id, char **err);
/*
 * Takes over the jobs the store holds in a non-terminal state, after a
 * restart: learners that still run are reattached (their logs are complete:
 * they write to files), learners that ended meanwhile get the exit status
 * they left on disk, queued or staging jobs start over, storing is redone.
 */
int ffdl_orch_recover(ffdl_orch *o, size_t *recovered);

/* Switches to generation GEN (borrowed) for every later hook call. */
void ffdl_orch_set_generation(ffdl_orch *o, ffdl_generation *gen);

/* Replaces the observer (both may be NULL). */
void ffdl_orch_set_observer(ffdl_orch *o, const ffdl_orch_observer *observer, void *ud);
/* Halts a job: its learners' process groups are killed; it ends HALTED. */
int ffdl_orch_halt(ffdl_orch *o, const char *id, const char *reason);
void ffdl_orch_halt_all(ffdl_orch *o, const char *reason);
/* Whether STATUS (a state's name, as the store and the API give it) is one
 * a job ends in: COMPLETED, FAILED or HALTED. NULL is not. */
int ffdl_orch_status_final(const char *status);
/* Jobs not yet COMPLETED, FAILED or HALTED. */
size_t ffdl_orch_active(const ffdl_orch *o);
/* Figures for /metrics: {queued, active, cpus_total, cpus_used, gpus_total,
 * gpus_used, memory_total, memory_used} (caller decrefs). */
json_t *ffdl_orch_stats(const ffdl_orch *o);

/* The job's status, or NULL when the orchestrator does not hold it. */
const char *ffdl_orch_status(const ffdl_orch *o, const char *id);
/* Where the job's results are (borrowed, valid while the orchestrator lives). */
const char *ffdl_orch_results_dir(const ffdl_orch *o, const char *id);
/* "s3://BUCKET/ID/" when the job's results go to an S3 results bucket, else
 * NULL (caller frees). */
char *ffdl_orch_results_url(const ffdl_orch *o, const char *id);

#endif
