/*
 * remote.c: jobs on a server, seen through polling (every 250 ms): status
 * changes become transitions, new log lines come from loglines paging.
 * Owns: the remote job table and the spec-to-manifest conversion. Must not:
 * run anything locally. HTTP calls are short and blocking: this is a client.
 */
#include "app/remote.h"
#include "api/upload.h"
#include "app/client.h"
#include "core/error.h"
#include "core/file.h"
#include "store/localstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct rjob {
  char id[64];
  char status[32];
  long lines_seen;
  int ended;
  struct rjob *next;
} rjob;

struct ffdl_remote {
  uv_timer_t poll;
  const ffdl_orch_observer *observer;
  void *ud;
  rjob *jobs;
};

static rjob *find(ffdl_remote *r, const char *id) {
  for (rjob *j = r->jobs; j; j = j->next)
    if (!strcmp(j->id, id)) return j;
  return NULL;
}

size_t ffdl_remote_active(const ffdl_remote *r) {
  size_t n = 0;
  for (rjob *j = r->jobs; j; j = j->next)
    n += !j->ended;
  return n;
}

static void poll_lines(ffdl_remote *r, rjob *j) {
  char path[256];
  snprintf(path, sizeof path, "/v1/logs/%s/loglines?pos=%ld&pagesize=1000", j->id, j->lines_seen);
  json_t *doc = ffdl_client_get(path);
  size_t i;
  json_t *m;
  json_array_foreach(json_object_get(doc, "models"), i, m) {
    const char *line = json_string_value(json_object_get(m, "line"));
    j->lines_seen++;
    if (line && r->observer && r->observer->on_line)
      r->observer->on_line(r->ud, j->id, 1, line, strlen(line));
  }
  json_decref(doc);
}

static void poll_job(ffdl_remote *r, rjob *j) {
  char path[256];
  snprintf(path, sizeof path, "/v1/models/%s", j->id);
  json_t *doc = ffdl_client_get(path);
  json_t *st = json_object_get(json_object_get(doc, "training"), "training_status");
  const char *status = json_string_value(json_object_get(st, "status"));
  poll_lines(r, j);
  if (status && strcmp(status, j->status) != 0) {
    snprintf(j->status, sizeof j->status, "%s", status);
    if (ffdl_orch_status_final(status)) poll_lines(r, j); /* the last lines before the end */
    if (r->observer && r->observer->on_transition)
      r->observer->on_transition(r->ud, j->id, j->status,
                                 json_string_value(json_object_get(st, "status_message")),
                                 json_string_value(json_object_get(st, "error_code")));
    if (ffdl_orch_status_final(status)) {
      j->ended = 1;
      if (r->observer && r->observer->on_end) r->observer->on_end(r->ud, j->id, j->status);
    }
  }
  json_decref(doc);
}

static void on_poll(uv_timer_t *t) {
  ffdl_remote *r = t->data;
  for (rjob *j = r->jobs; j; j = j->next)
    if (!j->ended) poll_job(r, j);
  if (ffdl_remote_active(r) == 0) uv_timer_stop(t);
}

int ffdl_remote_new(uv_loop_t *loop, const ffdl_orch_observer *observer, void *ud,
                    ffdl_remote **out) {
  ffdl_remote *r = calloc(1, sizeof *r);
  if (!r) return FFDL_ENOMEM;
  uv_timer_init(loop, &r->poll);
  r->poll.data = r;
  r->observer = observer;
  r->ud = ud;
  *out = r;
  return FFDL_OK;
}

void ffdl_remote_set_observer(ffdl_remote *r, const ffdl_orch_observer *observer, void *ud) {
  r->observer = observer;
  r->ud = ud;
}

static void free_after_close(uv_handle_t *h) {
  ffdl_remote *r = h->data;
  for (rjob *j = r->jobs, *next; j; j = next)
    next = j->next, free(j);
  free(r);
}

void ffdl_remote_free(ffdl_remote *r) {
  if (r) uv_close((uv_handle_t *)&r->poll, free_after_close);
}

static int track(ffdl_remote *r, const char *id) {
  rjob *j = calloc(1, sizeof *j);
  if (!j) return FFDL_ENOMEM;
  snprintf(j->id, sizeof j->id, "%s", id);
  j->next = r->jobs;
  r->jobs = j;
  if (!uv_is_active((uv_handle_t *)&r->poll)) uv_timer_start(&r->poll, on_poll, 0, 250);
  return FFDL_OK;
}

static void copy_field(json_t *to, const char *key, json_t *value) {
  if (value && !json_is_null(value)) json_object_set(to, key, value);
}

/* The normalized spec back as an FfDL manifest (JSON): what the server parses. */
static json_t *manifest_of(const json_t *spec) {
  json_t *m = json_object(), *res = json_object_get(spec, "resources");
  static const char *const top[] = {
      "name", "description", "version",     "learners",           "labels", "env", "args",
      "team", "priority",    "data_stores", "evaluation_metrics", NULL};
  for (const char *const *k = top; *k; k++)
    copy_field(m, *k, json_object_get(spec, *k));
  copy_field(m, "cpus", json_object_get(res, "cpus"));
  copy_field(m, "gpus", json_object_get(res, "gpus"));
  copy_field(m, "gpu_type", json_object_get(res, "gpu_type"));
  copy_field(m, "memory", json_object_get(res, "memory"));
  copy_field(m, "storage", json_object_get(res, "storage"));
  copy_field(m, "max_attempts", json_object_get(json_object_get(spec, "retry"), "max_attempts"));
  json_t *fw = json_object(), *sfw = json_object_get(spec, "framework");
  static const char *const fwkeys[] = {"name", "version", "image_tag", "command", NULL};
  for (const char *const *k = fwkeys; *k; k++)
    copy_field(fw, *k, json_object_get(sfw, *k));
  json_object_set_new(m, "framework", fw);
  if (json_array_size(json_object_get(m, "data_stores")) == 0) json_object_del(m, "data_stores");
  return m;
}

int ffdl_remote_submit_spec(ffdl_remote *r, const json_t *spec, const char *model, char id[64],
                            char **err) {
  json_t *manifest = manifest_of(spec);
  char *text = json_dumps(manifest, JSON_COMPACT);
  json_decref(manifest);
  int rc = text ? ffdl_client_submit("manifest.json", text, strlen(text), model, id, NULL, err)
                : FFDL_ENOMEM;
  free(text);
  return rc == 0 ? track(r, id) : rc;
}

const char *ffdl_remote_status(ffdl_remote *r, const char *id) {
  rjob *j = find(r, id);
  return j ? (j->status[0] ? j->status : "QUEUED") : NULL;
}

void ffdl_remote_halt(ffdl_remote *r, const char *id) {
  rjob *j = find(r, id);
  if (j && !j->ended) ffdl_client_halt(id);
}

void ffdl_remote_halt_all(ffdl_remote *r) {
  for (rjob *j = r->jobs; j; j = j->next)
    if (!j->ended) ffdl_client_halt(j->id);
}

json_t *ffdl_remote_job(ffdl_remote *r, const char *id) {
  (void)r;
  char path[256];
  snprintf(path, sizeof path, "/v1/logs/%s/emetrics?pagesize=100000", id);
  json_t *em = ffdl_client_get(path);
  json_t *final = json_object();
  size_t i;
  json_t *rec;
  json_array_foreach(json_object_get(em, "models"), i, rec) {
    const char *group = json_string_value(json_object_get(rec, "grouplabel"));
    json_t *values = json_deep_copy(json_object_get(rec, "values"));
    json_t *etimes = json_object_get(rec, "etimes");
    if (json_is_object(etimes)) json_object_update(values, etimes);
    json_object_set_new(final, group ? group : "", values);
  }
  json_decref(em);
  return json_pack("{s:s,s:o}", "id", id, "final_metrics", final);
}

int ffdl_remote_download(ffdl_remote *r, const char *id, const char *dir, char **err) {
  (void)r;
  char zip[] = "/tmp/ffdl-download-XXXXXX";
  int fd = mkstemp(zip);
  if (fd < 0) return (*err = strdup("cannot create a temporary file")), FFDL_EIO;
  close(fd);
  int rc = ffdl_client_download(id, "trained_model", zip);
  if (rc != 0) {
    unlink(zip);
    return (*err = strdup("the server has no trained model for this job")), FFDL_ENOENT;
  }
  char *data = NULL;
  size_t len = 0;
  rc = ffdl_file_read(zip, (size_t)16 << 30, &data, &len);
  unlink(zip);
  if (rc != 0) return (*err = strdup("cannot read the downloaded model")), rc;
  /* unpack into a fresh directory, then copy: DIR itself is never removed */
  char tmp[] = "/tmp/ffdl-unpack-XXXXXX";
  if (!mkdtemp(tmp)) {
    free(data);
    return (*err = strdup("cannot create a temporary directory")), FFDL_EIO;
  }
  rc = ffdl_upload_extract_zip(data, len, tmp, (uint64_t)16 << 30, err);
  free(data);
  if (rc == 0) rc = ffdl_localstore_copy_tree(tmp, dir, NULL, err);
  ffdl_localstore_remove_tree(tmp);
  return rc;
}
