/*
 * s3stage.c: the S3 side of DOWNLOADING and STORING.
 * Owns: turning an FfDL connection (auth_url, user_name, password, region,
 * and ffdl's checksum) into a client, and S3 errors into FfDL's codes.
 * Must not: log or return a secret.
 */
#include "orch/s3stage.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/str.h"
#include "core/log.h"
#include "store/s3.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ffdl_s3stage {
  ffdl_s3 *s3;
  ffdl_s3stage_cb done;
  ffdl_s3stage_progress_cb progress;
  uint64_t bytes_done, bytes_total, objects_total;
  void *ud;
  char source[600]; /* a download's s3://bucket/prefix, "" for an upload */
  const char *fail_code;
  char what[64];
  char code[8];
  char message[1024];
  int failed, empty; /* EMPTY: a download found no object (MESSAGE says so) */
  int canceled;
  char *bucket, *prefix, *results; /* an upload's, kept for after its clean-up */
};
typedef struct ffdl_s3stage op;

int ffdl_s3stage_is_s3(const json_t *store) {
  const char *type = json_string_value(json_object_get(store, "type"));
  return type && (!strcmp(type, "s3_datastore") || !strcmp(type, "mount_cos"));
}

const char *ffdl_s3stage_results_bucket(const json_t *store) {
  if (!ffdl_s3stage_is_s3(store)) return NULL;
  return json_string_value(
      json_object_get(json_object_get(store, "training_results"), "container"));
}

static void stage_free(void *ud) {
  op *o = ud;
  free(o->bucket);
  free(o->prefix);
  free(o->results);
  free(o);
}

static void closed(void *ud) {
  op *o = ud;
  if (o->progress)
    o->progress(o->ud, o->what, o->bytes_done, o->bytes_total,
                o->failed ? FFDL_PROGRESS_FAILED : FFDL_PROGRESS_DONE);
  o->done(o->ud, o->failed ? o->code : NULL, o->failed || o->empty ? o->message : NULL);
  stage_free(o);
}

static int is_credentials_error(const char *code) {
  static const char *const codes[] = {"InvalidAccessKeyId",
                                      "SignatureDoesNotMatch",
                                      "AccessDenied",
                                      "InvalidToken",
                                      "ExpiredToken",
                                      "AuthorizationHeaderMalformed",
                                      NULL};
  for (const char *const *c = codes; *c; c++)
    if (!strcmp(code, *c)) return 1;
  return 0;
}

static void finished(void *ud, int status, const ffdl_s3_error *err) {
  op *o = ud;
  if (status != 0) {
    o->failed = 1;
    const char *s3code = err && err->code[0] ? err->code : "Error";
    snprintf(o->code, sizeof o->code, "%s", is_credentials_error(s3code) ? "C103" : o->fail_code);
    if (o->canceled) {
      snprintf(o->message, sizeof o->message, "%s: canceled", o->what);
    } else { /* WHAT is short: the S3 error follows it */
      size_t n = (size_t)snprintf(o->message, sizeof o->message, "%s failed: ", o->what);
      ffdl_s3_error_text(err, o->message + n, sizeof o->message - n);
    }
  } else if (o->source[0] && o->objects_total == 0) { /* not an error: some jobs need no data */
    o->empty = 1;
    snprintf(o->message, sizeof o->message, "%s: no object under %s; $DATA_DIR is empty", o->what,
             o->source);
    ffdl_log(FFDL_LOG_WARN, "%s", o->message);
  }
  ffdl_s3_close(o->s3, closed, o); /* after a cancel: closing already, CLOSED comes once */
}

static void progress(void *ud, const ffdl_s3_progress *p) {
  op *o = ud;
  o->bytes_done = p->bytes_done;
  o->bytes_total = p->bytes_total;
  o->objects_total = p->objects_total;
  if (o->progress)
    o->progress(o->ud, o->what, p->bytes_done, p->bytes_total,
                p->retrying ? FFDL_PROGRESS_RETRYING : FFDL_PROGRESS_RUNNING);
}

static op *start(uv_loop_t *loop, const json_t *store, const char *what, const char *fail_code,
                 ffdl_s3stage_progress_cb progress_cb, ffdl_s3stage_cb done, void *ud) {
  json_t *conn = json_object_get(store, "connection");
  ffdl_s3_config cfg = {.endpoint = json_string_value(json_object_get(conn, "auth_url")),
                        .access_key = json_string_value(json_object_get(conn, "user_name")),
                        .secret_key = json_string_value(json_object_get(conn, "password")),
                        .region = json_string_value(json_object_get(conn, "region"))};
  /* ffdl's extensions, checked by the manifest schema (or the server's config):
   * crc32c (the default) or sha256, */
  const char *checksum = json_string_value(json_object_get(conn, "checksum"));
  if (checksum && ffdl_s3_checksum_parse(checksum, &cfg.checksum) != 0) return NULL;
  /* the part size and parallel requests (ffdl_s3_new checks them again), and
   * path or virtual-host addressing */
  cfg.part_size = (size_t)json_integer_value(json_object_get(conn, "part_size_bytes"));
  cfg.concurrency = (int)json_integer_value(json_object_get(conn, "concurrency"));
  const char *style = json_string_value(json_object_get(conn, "addressing_style"));
  if (style && ffdl_s3_addressing_parse(style, &cfg.virtual_host) != 0) return NULL;
  op *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  o->done = done;
  o->progress = progress_cb;
  o->ud = ud;
  o->fail_code = fail_code;
  snprintf(o->what, sizeof o->what, "%s", what);
  if (ffdl_s3_new(loop, &cfg, &o->s3) != 0) {
    free(o);
    return NULL;
  }
  return o;
}

/* After the S3 call that starts O returned RC: O runs (and *RUNNING, when
 * not NULL, names it) or is closed and freed. Returns RC. */
static int started(op *o, int rc, ffdl_s3stage **running) {
  if (rc != 0)
    ffdl_s3_close(o->s3, stage_free, o);
  else if (running)
    *running = o;
  return rc;
}

int ffdl_s3stage_download(uv_loop_t *loop, const json_t *store, const char *dir,
                          ffdl_s3stage_progress_cb progress_cb, ffdl_s3stage_cb done, void *ud,
                          ffdl_s3stage **running) {
  json_t *data = json_object_get(store, "training_data");
  const char *bucket = json_string_value(json_object_get(data, "container"));
  const char *prefix = json_string_value(json_object_get(data, "prefix"));
  if (!bucket) return FFDL_EINVALID; /* checked by the schema */
  op *o = start(loop, store, "downloading the training data", "S302", progress_cb, done, ud);
  if (!o) return FFDL_EINVALID;
  snprintf(o->source, sizeof o->source, "s3://%s/%s", bucket, prefix ? prefix : "");
  int rc = ffdl_s3_download_prefix(o->s3, bucket, prefix ? prefix : "", dir, progress, finished, o);
  return started(o, rc, running);
}

static void ignore_object(void *ud, const char *key, uint64_t size, const char *etag) {
  (void)ud, (void)key, (void)size, (void)etag;
}

int ffdl_s3stage_check_results(uv_loop_t *loop, const json_t *store, const char *prefix,
                               ffdl_s3stage_cb done, void *ud, ffdl_s3stage **running) {
  const char *bucket = ffdl_s3stage_results_bucket(store);
  if (!bucket) return FFDL_EINVALID;
  op *o = start(loop, store, "checking the results bucket", "S303", NULL, done, ud);
  if (!o) return FFDL_EINVALID;
  /* one short listing: a new job's PREFIX/ holds nothing yet */
  char *under = ffdl_strdup_printf("%s/", prefix);
  int rc = under ? ffdl_s3_list(o->s3, bucket, under, ignore_object, finished, o) : FFDL_ENOMEM;
  free(under);
  return started(o, rc, running);
}

void ffdl_s3stage_cancel(ffdl_s3stage *o) {
  if (!o || o->canceled) return;
  o->canceled = 1;
  /* fails what runs with "Canceled": FINISHED, then CLOSED, which calls DONE */
  ffdl_s3_close(o->s3, closed, o);
}

static void upload_results(op *o) {
  int rc = ffdl_s3_upload_dir(o->s3, o->bucket, o->prefix, o->results, progress, finished, o);
  if (rc != 0) {
    ffdl_s3_error err = {.code = "Error"};
    snprintf(err.message, sizeof err.message, "cannot start: %s", ffdl_strerror(rc));
    snprintf(err.bucket, sizeof err.bucket, "%s", o->bucket);
    finished(o, rc, &err);
  }
}

static void stale_aborted(void *ud, const char *key, const char *upload_id) {
  op *o = ud;
  ffdl_log(FFDL_LOG_WARN,
           "aborted an incomplete multipart upload of s3://%s/%s (upload id %s) that an earlier "
           "run left",
           o->bucket, key, upload_id);
}

/* Whatever the clean-up found, the results go up: a store that refuses to
 * list uploads (a store without the call, a server gone) still takes them.
 * A policy without s3:ListBucketMultipartUploads is common (uploads need
 * only s3:PutObject), so its AccessDenied is said at info level, not as a
 * warning on every job. */
static void stale_cleaned(void *ud, int status, const ffdl_s3_error *err) {
  op *o = ud;
  if (status != 0) {
    char text[1024];
    ffdl_s3_error_text(err, text, sizeof text);
    ffdl_log(strcmp(err->code, "AccessDenied") == 0 ? FFDL_LOG_INFO : FFDL_LOG_WARN,
             "cannot look for incomplete uploads under s3://%s/%s/ (%s); uploading anyway",
             o->bucket, o->prefix, text);
  }
  upload_results(o);
}

int ffdl_s3stage_upload(uv_loop_t *loop, const json_t *store, const char *prefix,
                        const char *results, ffdl_s3stage_progress_cb progress_cb,
                        ffdl_s3stage_cb done, void *ud) {
  const char *bucket = ffdl_s3stage_results_bucket(store);
  if (!bucket) return FFDL_EINVALID;
  op *o = start(loop, store, "uploading the results", "S303", progress_cb, done, ud);
  if (!o) return FFDL_EINVALID;
  o->bucket = strdup(bucket);
  o->prefix = strdup(prefix);
  o->results = strdup(results);
  char *under = ffdl_strdup_printf("%s/", prefix);
  /* first, what an earlier run of this job left half-uploaded (a server
   * killed in STORING stores again after its restart): only this job
   * writes under PREFIX/ */
  int rc = o->bucket && o->prefix && o->results && under
               ? ffdl_s3_abort_uploads(o->s3, bucket, under, stale_aborted, stale_cleaned, o)
               : FFDL_ENOMEM;
  free(under);
  return started(o, rc, NULL);
}
