/*
 * api.c: FfDL's v1 REST endpoints on top of the orchestrator.
 * Owns: routing, authentication (bearer token or basic auth, then
 * X-Watson-Userinfo for admins only), tenant checks (another user's job is
 * a 404), uploads, log streams, /metrics. Must not: schedule, or touch a
 * job except through the orchestrator and the store.
 */
#include "api/api.h"
#include "api/http.h"
#include "api/multipart.h"
#include "api/upload.h"
#include "core/error.h"
#include "core/log.h"
#include "policy/limits.h"
#include "policy/spec.h"
#include "store/localstore.h"

#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_FOLLOWERS_PER_JOB 10000

typedef struct follower {
  ffdl_stream *stream;
  char id[64];
  struct follower *next;
} follower;

typedef struct rate {
  char user[65];
  double tokens;
  double last;
  struct rate *next;
} rate;

#define LATENCY_BUCKETS 8
static const double latency_bounds[LATENCY_BUCKETS] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5};

/* Request latency per route and status, for /metrics. */
typedef struct latency {
  char route[48];
  int status;
  unsigned long buckets[LATENCY_BUCKETS], count;
  double sum;
  struct latency *next;
} latency;

struct ffdl_api {
  ffdl_api_opts o;
  latency *latencies;
  follower *followers;
  rate *rates;
  /* counters for /metrics */
  unsigned long requests, created, completed, failed, halted, deleted, rejected;
  json_t *failed_by_code; /* {"C201": n, ...} */
};

typedef struct {
  char user[65];
  int admin;
} caller;

int ffdl_api_new(const ffdl_api_opts *opts, ffdl_api **out) {
  ffdl_api *api = calloc(1, sizeof *api);
  if (!api) return FFDL_ENOMEM;
  api->o = *opts;
  api->failed_by_code = json_object();
  *out = api;
  return FFDL_OK;
}

void ffdl_api_free(ffdl_api *api) {
  if (!api) return;
  for (rate *r = api->rates, *next; r; r = next)
    next = r->next, free(r);
  for (latency *l = api->latencies, *next; l; l = next)
    next = l->next, free(l);
  for (follower *f = api->followers, *next; f; f = next)
    next = f->next, free(f);
  json_decref(api->failed_by_code);
  free(api);
}

/* ---- authentication ----------------------------------------------------- */

static int base64_decode(const char *in, char *out, size_t cap) {
  size_t len = strlen(in);
  if (len % 4 != 0 || len / 4 * 3 >= cap) return -1;
  int n = EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)in, (int)len);
  if (n < 0) return -1;
  while (len > 0 && in[len - 1] == '=')
    len--, n--;
  out[n] = '\0';
  return n;
}

/* Fills WHO from the request; 0 when authenticated. */
static int authenticate(ffdl_api *api, h2o_req_t *req, caller *who) {
  const char *auth = ffdl_http_request_header(req, "authorization");
  if (!auth) return -1;
  char name[65];
  int admin = 0;
  if (strncasecmp(auth, "Bearer ", 7) == 0) {
    if (ffdl_users_authenticate(api->o.users, auth + 7, name, &admin) != FFDL_OK) return -1;
  } else if (strncasecmp(auth, "Basic ", 6) == 0) {
    char decoded[512];
    if (base64_decode(auth + 6, decoded, sizeof decoded) < 0) return -1;
    char *colon = strchr(decoded, ':');
    if (!colon) return -1;
    *colon = '\0';
    if (ffdl_users_authenticate(api->o.users, colon + 1, name, &admin) != FFDL_OK) return -1;
    /* FfDL's client sends the user name too: it must be the token's owner */
    if (decoded[0] && strcmp(decoded, name) != 0 && !admin) return -1;
  } else {
    return -1;
  }
  snprintf(who->user, sizeof who->user, "%s", name);
  who->admin = admin;
  /* FfDL's gateway header: honoured only for an authenticated admin */
  const char *info = ffdl_http_request_header(req, "x-watson-userinfo");
  const char *tenant = ffdl_http_request_header(req, "x-wml-tenantid");
  const char *as = NULL;
  if (info && (as = strstr(info, "bluemix-instance-id="))) as += 20;
  if (tenant && *tenant) as = tenant;
  if (as && admin) {
    snprintf(who->user, sizeof who->user, "%.*s", (int)strcspn(as, ";, "), as);
    who->admin = 0; /* acting for a user means seeing what that user sees */
  }
  return 0;
}

/* ---- jobs as FfDL's Model object ---------------------------------------- */

static json_t *ms_string(json_t *ms) {
  if (!json_is_integer(ms)) return json_string("");
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", (long long)json_integer_value(ms));
  return json_string(buf);
}

static json_t *model_object(const json_t *job) {
  json_t *spec = json_object_get(job, "spec");
  json_t *fw = json_object_get(spec, "framework");
  json_t *res = json_object_get(spec, "resources");
  const char *id = json_string_value(json_object_get(job, "id"));
  char location[128];
  snprintf(location, sizeof location, "/v1/models/%s", id);
  json_t *stores = json_array(), *inputs = json_array(), *outputs = json_array();
  size_t i;
  json_t *store;
  json_array_foreach(json_object_get(spec, "data_stores"), i, store) {
    json_t *shown = ffdl_spec_redacted(store);
    json_array_append_new(stores, json_pack("{s:O?,s:O?,s:O?}", "data_store_id",
                                            json_object_get(store, "id"), "type",
                                            json_object_get(store, "type"), "connection",
                                            json_object_get(shown, "connection")
                                                ? json_object_get(shown, "connection")
                                                : json_object()));
    json_decref(shown);
    json_array_append(inputs, json_object_get(store, "id"));
    json_array_append(outputs, json_object_get(store, "id"));
  }
  json_int_t memory = json_integer_value(json_object_get(res, "memory_bytes"));
  json_t *status = json_pack(
      "{s:O?,s:O?,s:O?,s:O?,s:o,s:o}", "status", json_object_get(job, "status"),
      "status_description", json_object_get(job, "status"), "status_message",
      json_object_get(job, "status_message"), "error_code", json_object_get(job, "error_code"),
      "submitted", ms_string(json_object_get(job, "submitted_ms")), "completed",
      ms_string(json_object_get(job, "completed_ms")));
  json_t *training =
      json_pack("{s:O?,s:O?,s:O?,s:I,s:s,s:O?,s:o,s:o,s:o}", "command",
                json_object_get(fw, "command"), "cpus", json_object_get(res, "cpus"), "gpus",
                json_object_get(res, "gpus"), "memory", (json_int_t)(memory / (1 << 20)),
                "memory_unit", "MiB", "learners", json_object_get(spec, "learners"), "input_data",
                inputs, "output_data", outputs, "training_status", status);
  return json_pack(
      "{s:s,s:s,s:O?,s:O?,s:{s:O?,s:O?},s:o,s:o,s:O?}", "model_id", id, "location", location,
      "name", json_object_get(job, "name"), "description",
      json_object_get(spec, "description") ? json_object_get(spec, "description") : json_string(""),
      "framework", "name", json_object_get(fw, "name"), "version", json_object_get(fw, "version"),
      "training", training, "data_stores", stores, "user", json_object_get(job, "user"));
}

/* The job if WHO may see it; NULL (a 404 for the caller) otherwise. */
static json_t *visible_job(ffdl_api *api, const caller *who, const char *id) {
  json_t *job = ffdl_jobstore_get(api->o.store, id);
  if (!job) return NULL;
  const char *owner = json_string_value(json_object_get(job, "user"));
  if (!who->admin && (!owner || strcmp(owner, who->user) != 0)) {
    json_decref(job);
    return NULL;
  }
  return job;
}

static void not_found(h2o_req_t *req, const char *id) {
  char msg[160];
  snprintf(msg, sizeof msg, "no model with id %s", id);
  ffdl_http_error(req, 404, "Not Found", msg);
}

/* ---- handlers ----------------------------------------------------------- */

static int rate_allows(ffdl_api *api, const char *user) {
  if (api->o.creates_per_minute <= 0) return 1;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  double now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
  rate *r = api->rates;
  while (r && strcmp(r->user, user) != 0)
    r = r->next;
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r) return 1;
    snprintf(r->user, sizeof r->user, "%s", user);
    r->tokens = api->o.creates_per_minute;
    r->last = now;
    r->next = api->rates;
    api->rates = r;
  }
  double cap = api->o.creates_per_minute;
  r->tokens += (now - r->last) * cap / 60.0;
  if (r->tokens > cap) r->tokens = cap;
  r->last = now;
  if (r->tokens < 1) return 0;
  r->tokens -= 1;
  return 1;
}

static char *diags_text(ffdl_diags *diags, const char *name) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return strdup("invalid manifest");
  ffdl_diags_print(diags, name, f);
  fclose(f);
  while (len && buf[len - 1] == '\n')
    buf[--len] = '\0';
  return buf;
}

/* The warnings of a valid manifest as the FILE:LINE:COL lines ffdl-run
 * prints (caller decrefs): FfDL's answer to a create, plus "warnings". */
static json_t *warning_lines(ffdl_diags *diags, const char *name) {
  json_t *lines = json_array();
  char *text = diags->n ? diags_text(diags, name) : NULL;
  for (char *line = text, *end; line && *line; line = end ? end + 1 : NULL) {
    end = strchr(line, '\n');
    if (end) *end = '\0';
    if (*line) json_array_append_new(lines, json_string(line));
    if (!end) break;
  }
  free(text);
  return lines;
}

static void create_model(ffdl_api *api, h2o_req_t *req, const caller *who) {
  if (!rate_allows(api, who->user))
    return ffdl_http_error(req, 429, "Too Many Requests", "too many trainings created; try later");
  ffdl_part parts[8];
  int n = ffdl_multipart_parse(ffdl_http_request_header(req, "content-type"), req->entity.base,
                               req->entity.len, parts, 8);
  const ffdl_part *manifest = n > 0 ? ffdl_multipart_find(parts, n, "manifest") : NULL;
  const ffdl_part *model = n > 0 ? ffdl_multipart_find(parts, n, "model_definition") : NULL;
  if (!manifest || !model)
    return ffdl_http_error(req, 400, "C101",
                           "a multipart body with the parts manifest and "
                           "model_definition is required");
  const char *name = manifest->filename[0] ? manifest->filename : "manifest.yml";
  if (!strchr(name, '.')) name = "manifest.yml";
  char *text = malloc(manifest->len + 1);
  if (!text) return ffdl_http_error(req, 500, "Internal Server Error", "out of memory");
  memcpy(text, manifest->data, manifest->len);
  text[manifest->len] = '\0';
  ffdl_diags diags = {0};
  json_t *spec = NULL;
  int rc = ffdl_spec_check_buffer(ffdl_policies_active(api->o.policies), name, text, manifest->len,
                                  FFDL_SPEC_AUTO, &diags, &spec);
  free(text);
  if (rc != FFDL_OK || !spec) {
    char *msg = diags_text(&diags, name);
    ffdl_diags_free(&diags);
    json_decref(spec);
    api->rejected++;
    ffdl_http_error(req, 400, "C101", msg);
    free(msg);
    return;
  }
  json_t *warnings = warning_lines(&diags, name);
  ffdl_diags_free(&diags);
  json_object_set_new(spec, "user", json_string(who->user));
  /* FfDL's internal store: results of manifests that name no data store */
  if (api->o.default_store && json_array_size(json_object_get(spec, "data_stores")) == 0)
    json_object_set_new(spec, "data_stores", json_pack("[O]", api->o.default_store));
  /* the model code goes to an upload directory first; nothing half-made stays */
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/uploads/%lx-%d", api->o.home, (unsigned long)random(), getpid());
  char *err = NULL;
  rc = ffdl_upload_extract_zip(model->data, model->len, dir, api->o.max_unzipped, &err);
  if (rc != FFDL_OK) {
    json_decref(spec);
    json_decref(warnings);
    api->rejected++;
    ffdl_http_error(req, 400, "C102", err ? err : "invalid model zip");
    free(err);
    return;
  }
  char id[64];
  rc = ffdl_orch_submit(api->o.orch, spec, dir, id, &err);
  json_decref(spec);
  if (rc != FFDL_OK) {
    ffdl_localstore_remove_tree(dir);
    json_decref(warnings);
    api->rejected++;
    ffdl_http_error(req, 400, "C104", err ? err : ffdl_strerror(rc));
    free(err);
    return;
  }
  api->created++;
  char location[128];
  snprintf(location, sizeof location, "/v1/models/%s", id);
  ffdl_http_header(req, "location", location);
  ffdl_http_json(req, 201,
                 json_pack("{s:s,s:s,s:o}", "model_id", id, "location", location, "warnings",
                           warnings ? warnings : json_array()));
}

static void list_models(ffdl_api *api, h2o_req_t *req, const caller *who) {
  json_t *jobs = ffdl_jobstore_list_with_specs(api->o.store, who->admin ? NULL : who->user);
  json_t *models = json_array();
  size_t i;
  json_t *job;
  json_array_foreach(jobs, i, job) json_array_append_new(models, model_object(job));
  json_decref(jobs);
  ffdl_http_json(req, 200, json_pack("{s:o}", "models", models));
}

static void patch_model(ffdl_api *api, h2o_req_t *req, const char *id) {
  json_t *body = json_loadb(req->entity.base, req->entity.len, 0, NULL);
  const char *status = json_string_value(json_object_get(body, "status"));
  int halt = status && (strcmp(status, "halt") == 0 || strcmp(status, "halted") == 0);
  json_decref(body);
  if (!halt)
    return ffdl_http_error(req, 400, "Bad Request", "the body must be {\"status\": \"halt\"}");
  ffdl_orch_halt(api->o.orch, id, "halted through the API");
  ffdl_http_json(req, 202, json_pack("{s:s}", "model_id", id));
}

static void delete_model(ffdl_api *api, h2o_req_t *req, const char *id) {
  ffdl_orch_halt(api->o.orch, id, "deleted through the API");
  ffdl_jobstore_delete(api->o.store, id);
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/%s", api->o.results, id);
  ffdl_localstore_remove_tree(dir);
  api->deleted++;
  ffdl_http_json(req, 200, json_pack("{s:s}", "model_id", id));
}

static void trained_model(ffdl_api *api, h2o_req_t *req, const char *id) {
  char dir[4200], zip[4300], name[128];
  snprintf(dir, sizeof dir, "%s/%s", api->o.results, id);
  snprintf(zip, sizeof zip, "%s/uploads/%s-trained.zip", api->o.home, id);
  snprintf(name, sizeof name, "%s-trainedmodel.zip", id);
  char *err = NULL;
  ffdl_localstore_mkdirs(zip, 0755);
  rmdir(zip);
  if (access(dir, F_OK) != 0 || ffdl_localstore_zip_dir(dir, zip, NULL, &err) != FFDL_OK) {
    free(err);
    return ffdl_http_error(req, 404, "Not Found", "the job has no results yet");
  }
  ffdl_http_file(req, zip, "application/zip", name);
  unlink(zip);
}

static char *log_path(ffdl_api *api, const char *id, int learner) {
  char *path = malloc(4300);
  if (path)
    snprintf(path, 4300, "%s/jobs/%s/learner-%d/logs/training-log.txt", api->o.home, id, learner);
  return path;
}

static void on_follower_closed(void *ud, ffdl_stream *s) {
  ffdl_api *api = ud;
  for (follower **p = &api->followers; *p; p = &(*p)->next)
    if ((*p)->stream == s) {
      follower *gone = *p;
      *p = gone->next;
      free(gone);
      return;
    }
}

static void logs(ffdl_api *api, h2o_req_t *req, const char *id, const json_t *job) {
  const char *follow = ffdl_http_query(req, "follow");
  const char *status = json_string_value(json_object_get(job, "status"));
  int ended = ffdl_orch_status_final(status);
  int live = follow && strcmp(follow, "true") == 0 && !ended;
  char *path = log_path(api, id, 1);
  FILE *f = path ? fopen(path, "r") : NULL;
  free(path);
  /* no file yet: no learner has started (a job that failed in DOWNLOADING
   * never has one); the client says so instead of printing nothing */
  if (!f) ffdl_http_header(req, "x-ffdl-learner-log", "none");
  ffdl_stream *s =
      ffdl_stream_start(req, "text/plain; charset=utf-8", live ? on_follower_closed : NULL, api);
  if (f) {
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
      ffdl_stream_write(s, buf, n);
    fclose(f);
  }
  if (!live) return ffdl_stream_finish(s);
  follower *fl = calloc(1, sizeof *fl);
  if (!fl) return ffdl_stream_finish(s);
  fl->stream = s;
  snprintf(fl->id, sizeof fl->id, "%s", id);
  fl->next = api->followers;
  api->followers = fl;
}

static long query_long(h2o_req_t *req, const char *name, long fallback) {
  const char *v = ffdl_http_query(req, name);
  return v && *v ? strtol(v, NULL, 10) : fallback;
}

static void loglines(ffdl_api *api, h2o_req_t *req, const char *id, const json_t *job) {
  long pos = query_long(req, "pos", 0), pagesize = query_long(req, "pagesize", 1000);
  if (pos < 0) pos = 0;
  if (pagesize <= 0 || pagesize > 100000) pagesize = 1000;
  json_t *models = json_array();
  char *path = log_path(api, id, 1);
  FILE *f = path ? fopen(path, "r") : NULL;
  free(path);
  char line[65536 + 2];
  long index = 0;
  while (f && fgets(line, sizeof line, f) && (long)json_array_size(models) < pagesize) {
    if (index++ < pos) continue;
    line[strcspn(line, "\n")] = '\0';
    json_array_append_new(models, json_pack("{s:{s:s,s:O,s:I,s:I},s:s}", "meta", "training_id", id,
                                            "user_id", json_object_get(job, "user"), "time",
                                            (json_int_t)time(NULL) * 1000, "rindex",
                                            (json_int_t)index, "line", line));
  }
  if (f) fclose(f);
  ffdl_http_json(req, 200, json_pack("{s:o}", "models", models));
}

static void emetrics(ffdl_api *api, h2o_req_t *req, const char *id, json_t *job) {
  (void)api;
  long pos = query_long(req, "pos", 0), pagesize = query_long(req, "pagesize", 1000);
  if (pos < 0) pos = 0;
  if (pagesize <= 0 || pagesize > 100000) pagesize = 1000;
  json_t *models = json_array();
  size_t i;
  json_t *record;
  json_array_foreach(json_object_get(job, "metrics"), i, record) {
    if ((long)i < pos) continue;
    if ((long)json_array_size(models) >= pagesize) break;
    json_t *copy = json_deep_copy(record);
    json_t *meta = json_object_get(copy, "meta");
    if (json_is_object(meta)) {
      json_object_set_new(meta, "training_id", json_string(id));
      json_object_set(meta, "user_id", json_object_get(job, "user"));
    }
    json_array_append_new(models, copy);
  }
  ffdl_http_json(req, 200, json_pack("{s:o}", "models", models));
}

/* Why the job is where it is: its status and the policy decision log. */
static void explain(ffdl_api *api, h2o_req_t *req, const char *id, json_t *job) {
  json_t *transitions = json_object_get(job, "transitions");
  json_t *last = json_array_get(transitions, json_array_size(transitions) - 1);
  ffdl_http_json(req, 200,
                 json_pack("{s:s,s:O?,s:O?,s:o}", "model_id", id, "status",
                           json_object_get(job, "status"), "since",
                           json_object_get(last, "time_ms"), "decisions",
                           ffdl_jobstore_decisions(api->o.store, id)));
}

/* "/v1/models/training-abc/logs" -> "/v1/models/{id}/logs": few labels. */
static void route_of(const char *path, char *out, size_t cap) {
  static const char *const prefixes[] = {"/v1/models/", "/v1/logs/", "/v1/users/", NULL};
  for (const char *const *p = prefixes; *p; p++) {
    size_t n = strlen(*p);
    if (strncmp(path, *p, n) != 0) continue;
    const char *rest = strchr(path + n, '/');
    snprintf(out, cap, "%s{id}%s", *p, rest ? rest : "");
    return;
  }
  snprintf(out, cap, "%s",
           strncmp(path, "/v1/", 4) == 0 || !strcmp(path, "/health") || !strcmp(path, "/metrics")
               ? path
               : "other");
}

static void observe_latency(ffdl_api *api, const char *path, int status, double seconds) {
  char route[48];
  route_of(path, route, sizeof route);
  latency *l = api->latencies;
  while (l && (l->status != status || strcmp(l->route, route) != 0))
    l = l->next;
  if (!l) {
    if (!(l = calloc(1, sizeof *l))) return;
    snprintf(l->route, sizeof l->route, "%s", route);
    l->status = status;
    l->next = api->latencies;
    api->latencies = l;
  }
  for (int b = 0; b < LATENCY_BUCKETS; b++)
    if (seconds <= latency_bounds[b]) l->buckets[b]++;
  l->count++;
  l->sum += seconds;
}

static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    va_start(ap, fmt);
    int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < *cap - *len) {
      *len += (size_t)n;
      return;
    }
    char *grown = realloc(*buf, *cap * 2 + (size_t)n);
    if (!grown) return;
    *buf = grown;
    *cap = *cap * 2 + (size_t)n;
  }
}

static void metrics_latency(ffdl_api *api, char **buf, size_t *len, size_t *cap) {
  append(buf, len, cap,
         "# HELP ffdl_api_request_seconds API request latency.\n"
         "# TYPE ffdl_api_request_seconds histogram\n");
  for (latency *l = api->latencies; l; l = l->next) {
    for (int b = 0; b < LATENCY_BUCKETS; b++)
      append(buf, len, cap,
             "ffdl_api_request_seconds_bucket{route=\"%s\",status=\"%d\",le=\"%g\"} %lu\n",
             l->route, l->status, latency_bounds[b], l->buckets[b]);
    append(buf, len, cap,
           "ffdl_api_request_seconds_bucket{route=\"%s\",status=\"%d\",le=\"+Inf\"} %lu\n"
           "ffdl_api_request_seconds_sum{route=\"%s\",status=\"%d\"} %g\n"
           "ffdl_api_request_seconds_count{route=\"%s\",status=\"%d\"} %lu\n",
           l->route, l->status, l->count, l->route, l->status, l->sum, l->route, l->status,
           l->count);
  }
}

static void metrics_cluster(ffdl_api *api, char **buf, size_t *len, size_t *cap) {
  json_t *st = ffdl_orch_stats(api->o.orch);
  append(buf, len, cap,
         "# TYPE ffdl_queue_length gauge\nffdl_queue_length %lld\n"
         "# TYPE ffdl_cpus gauge\nffdl_cpus{state=\"used\"} %g\nffdl_cpus{state=\"free\"} %g\n"
         "# TYPE ffdl_gpus gauge\nffdl_gpus{state=\"used\"} %lld\nffdl_gpus{state=\"free\"} %lld\n",
         (long long)json_integer_value(json_object_get(st, "queued")),
         json_number_value(json_object_get(st, "cpus_used")),
         json_number_value(json_object_get(st, "cpus_total")) -
             json_number_value(json_object_get(st, "cpus_used")),
         (long long)json_integer_value(json_object_get(st, "gpus_used")),
         (long long)(json_integer_value(json_object_get(st, "gpus_total")) -
                     json_integer_value(json_object_get(st, "gpus_used"))));
  json_decref(st);
}

static void metrics_internals(char **buf, size_t *len, size_t *cap) {
  ffdl_latency latency;
  ffdl_policy_call_latency(&latency);
  const ffdl_latency *p = &latency;
  append(buf, len, cap,
         "# HELP ffdl_policy_call_seconds Latency of policy hook calls.\n"
         "# TYPE ffdl_policy_call_seconds histogram\n");
  for (int b = 0; b < FFDL_LATENCY_BUCKET_COUNT; b++)
    append(buf, len, cap, "ffdl_policy_call_seconds_bucket{le=\"%g\"} %lu\n",
           FFDL_LATENCY_BOUNDS[b], p->buckets[b]);
  append(buf, len, cap,
         "ffdl_policy_call_seconds_bucket{le=\"+Inf\"} %lu\nffdl_policy_call_seconds_sum %g\n"
         "ffdl_policy_call_seconds_count %lu\n",
         p->count, p->sum, p->count);
  append(buf, len, cap,
         "# HELP ffdl_policy_limit_exceeded_total Policy calls stopped by a deadline or the "
         "memory cap.\n# TYPE ffdl_policy_limit_exceeded_total counter\n");
  for (int h = 0; h <= FFDL_HOOK_COUNT; h++)
    for (int k = 0; k < FFDL_LIMIT_KIND_COUNT; k++)
      append(buf, len, cap, "ffdl_policy_limit_exceeded_total{hook=\"%s\",limit=\"%s\"} %lu\n",
             ffdl_hook_name(h), ffdl_limit_kind_name((ffdl_limit_kind)k),
             ffdl_policy_limit_exceeded(h, (ffdl_limit_kind)k));
  unsigned long writes;
  double sum, max;
  ffdl_jobstore_write_latency(&writes, &sum, &max);
  append(buf, len, cap,
         "# HELP ffdl_store_write_seconds Transactional state writes to SQLite.\n"
         "# TYPE ffdl_store_write_seconds summary\nffdl_store_write_seconds_sum %g\n"
         "ffdl_store_write_seconds_count %lu\n# TYPE ffdl_store_write_seconds_max gauge\n"
         "ffdl_store_write_seconds_max %g\n",
         sum, writes, max);
}

/* Policy reloads: the loop's pause at a swap, trigger-to-active latency. */
static void metrics_reload(ffdl_api *api, char **buf, size_t *len, size_t *cap) {
  ffdl_policies_timings t;
  ffdl_policies_timings_get(api->o.policies, &t);
  append(buf, len, cap,
         "# HELP ffdl_policy_swaps_total Policy generations swapped in since the start.\n"
         "# TYPE ffdl_policy_swaps_total counter\nffdl_policy_swaps_total %lu\n"
         "# HELP ffdl_policy_swap_pause_seconds Loop time taken by the last generation swap.\n"
         "# TYPE ffdl_policy_swap_pause_seconds gauge\nffdl_policy_swap_pause_seconds %g\n"
         "# HELP ffdl_policy_swap_pause_max_seconds The longest generation swap.\n"
         "# TYPE ffdl_policy_swap_pause_max_seconds gauge\nffdl_policy_swap_pause_max_seconds %g\n"
         "# HELP ffdl_policy_reload_seconds Last reload, file event or request to active.\n"
         "# TYPE ffdl_policy_reload_seconds gauge\nffdl_policy_reload_seconds %g\n"
         "# HELP ffdl_policy_reload_max_seconds The longest reload, trigger to active.\n"
         "# TYPE ffdl_policy_reload_max_seconds gauge\nffdl_policy_reload_max_seconds %g\n"
         "# HELP ffdl_policy_build_seconds Thread-pool time of the last generation build.\n"
         "# TYPE ffdl_policy_build_seconds gauge\nffdl_policy_build_seconds %g\n"
         "# HELP ffdl_policy_swap_cpu_max_seconds Most loop-thread CPU time of one swap.\n"
         "# TYPE ffdl_policy_swap_cpu_max_seconds gauge\nffdl_policy_swap_cpu_max_seconds %g\n",
         t.swaps, t.last_swap_pause_s, t.max_swap_pause_s, t.last_reload_s, t.max_reload_s,
         t.last_build_s, t.max_swap_cpu_s);
}

static void metrics_text(ffdl_api *api, h2o_req_t *req) {
  char buf[2048];
  int n = snprintf(buf, sizeof buf,
                   "# HELP ffdl_trainings_created_total Trainings accepted by the API.\n"
                   "# TYPE ffdl_trainings_created_total counter\n"
                   "ffdl_trainings_created_total %lu\n"
                   "# HELP ffdl_trainings_rejected_total Creations refused (bad manifest or zip).\n"
                   "# TYPE ffdl_trainings_rejected_total counter\n"
                   "ffdl_trainings_rejected_total %lu\n"
                   "# TYPE ffdl_trainings_completed_total counter\n"
                   "ffdl_trainings_completed_total %lu\n"
                   "# TYPE ffdl_trainings_failed_total counter\n"
                   "ffdl_trainings_failed_total %lu\n"

                   "# TYPE ffdl_trainings_halted_total counter\n"
                   "ffdl_trainings_halted_total %lu\n"
                   "# TYPE ffdl_trainings_deleted_total counter\n"
                   "ffdl_trainings_deleted_total %lu\n"
                   "# TYPE ffdl_api_requests_total counter\n"
                   "ffdl_api_requests_total %lu\n"
                   "# TYPE ffdl_trainings_active gauge\n"
                   "ffdl_trainings_active %zu\n"
                   "# HELP ffdl_policy_reload_failures_total Policy reloads rejected.\n"
                   "# TYPE ffdl_policy_reload_failures_total counter\n"
                   "ffdl_policy_reload_failures_total %lu\n",
                   api->created, api->rejected, api->completed, api->failed, api->halted,
                   api->deleted, api->requests, ffdl_orch_active(api->o.orch),
                   ffdl_policies_failures(api->o.policies));
  size_t len = 0, cap = 8192;
  char *all = malloc(cap);
  if (!all) return ffdl_http_text(req, 200, "text/plain; version=0.0.4", buf, (size_t)n);
  all[0] = '\0';
  append(&all, &len, &cap, "%s", buf);
  const char *code;
  json_t *count;
  append(&all, &len, &cap,
         "# HELP ffdl_trainings_failed_by_code_total Failed trainings by FfDL "
         "error code.\n# TYPE ffdl_trainings_failed_by_code_total counter\n");
  json_object_foreach(api->failed_by_code, code, count)
      append(&all, &len, &cap, "ffdl_trainings_failed_by_code_total{code=\"%s\"} %lld\n", code,
             (long long)json_integer_value(count));
  metrics_cluster(api, &all, &len, &cap);
  metrics_latency(api, &all, &len, &cap);
  metrics_internals(&all, &len, &cap);
  metrics_reload(api, &all, &len, &cap);
  ffdl_http_text(req, 200, "text/plain; version=0.0.4", all, len);
  free(all);
}

static void users_route(ffdl_api *api, h2o_req_t *req, const caller *who, const char *rest) {
  if (!who->admin) return ffdl_http_error(req, 403, "Forbidden", "only an admin manages users");
  if (ffdl_http_method_is(req, "GET") && !*rest)
    return ffdl_http_json(req, 200, json_pack("{s:o}", "users", ffdl_users_list(api->o.users)));
  if (ffdl_http_method_is(req, "POST") && !*rest) {
    json_t *body = json_loadb(req->entity.base, req->entity.len, 0, NULL);
    const char *name = json_string_value(json_object_get(body, "name"));
    int admin = json_is_true(json_object_get(body, "admin"));
    char token[80];
    int rc = name ? ffdl_users_add(api->o.users, name, admin, NULL, token) : FFDL_EINVALID;
    json_t *reply = rc == FFDL_OK
                        ? json_pack("{s:s,s:b,s:s}", "name", name, "admin", admin, "token", token)
                        : NULL;
    json_decref(body);
    if (!reply)
      return ffdl_http_error(req, 400, "Bad Request",
                             "a new user needs {\"name\": NAME} made of "
                             "letters, digits, _.@- (and must not exist)");
    return ffdl_http_json(req, 201, reply);
  }
  if (ffdl_http_method_is(req, "DELETE") && *rest == '/') {
    if (ffdl_users_remove(api->o.users, rest + 1) != FFDL_OK)
      return ffdl_http_error(req, 404, "Not Found", "no such user");
    return ffdl_http_json(req, 200, json_pack("{s:s}", "name", rest + 1));
  }
  ffdl_http_error(req, 405, "Method Not Allowed", "users: GET, POST, DELETE /v1/users/NAME");
}

/* A POST /v1/policies/reload waiting for its build. */
typedef struct {
  ffdl_api *api;
  ffdl_http_later *later;
  uint64_t start;
} reload_answer;

static void reload_done(void *ud, int rc, const char *err) {
  reload_answer *a = ud;
  h2o_req_t *req = ffdl_http_later_take(a->later);
  if (req) { /* the client may have gone meanwhile */
    if (rc == FFDL_OK)
      ffdl_http_json(req, 200, ffdl_policies_status(a->api->o.policies));
    else if (!err) /* the server is stopping */
      ffdl_http_error(req, 503, "Service Unavailable", "the server is stopping");
    else
      ffdl_http_error(req, 422, "policy rejected", err);
    observe_latency(a->api, "/v1/policies/reload", req->res.status,
                    (double)(uv_hrtime() - a->start) / 1e9);
  }
  free(a);
}

static void policies_route(ffdl_api *api, h2o_req_t *req, const caller *who, const char *rest) {
  if (!*rest && ffdl_http_method_is(req, "GET"))
    return ffdl_http_json(req, 200, ffdl_policies_status(api->o.policies));
  if (!strcmp(rest, "/reload") && ffdl_http_method_is(req, "POST")) {
    if (!who->admin)
      return ffdl_http_error(req, 403, "Forbidden", "only an admin reloads policies");
    /* the build runs on the thread pool: answer when it has ended */
    reload_answer *a = malloc(sizeof *a);
    if (a) a->later = ffdl_http_later_new(req);
    if (!a || !a->later) {
      free(a);
      return ffdl_http_error(req, 503, "Service Unavailable", "out of memory");
    }
    a->api = api;
    a->start = uv_hrtime();
    if (ffdl_policies_reload(api->o.policies, reload_done, a) != FFDL_OK) {
      ffdl_http_later_take(a->later);
      free(a);
      return ffdl_http_error(req, 503, "Service Unavailable", "the server is stopping");
    }
    return;
  }
  ffdl_http_error(req, 404, "Not Found", "policies: GET /v1/policies, POST /v1/policies/reload");
}

/* /v1/models/{id}[/sub] and /v1/logs/{id}/sub for an authenticated caller. */
static void job_route(ffdl_api *api, h2o_req_t *req, const caller *who, const char *id,
                      const char *sub) {
  json_t *job = visible_job(api, who, id);
  if (!job) return not_found(req, id);
  int get = ffdl_http_method_is(req, "GET");
  if (!*sub && get)
    ffdl_http_json(req, 200, model_object(job));
  else if (!*sub && ffdl_http_method_is(req, "PATCH"))
    patch_model(api, req, id);
  else if (!*sub && ffdl_http_method_is(req, "DELETE"))
    delete_model(api, req, id);
  else if (get && !strcmp(sub, "definition")) {
    char path[4300], name[128];
    snprintf(path, sizeof path, "%s/%s/_submitted_code/model.zip", api->o.results, id);
    snprintf(name, sizeof name, "%s-definition.zip", id);
    ffdl_http_file(req, path, "application/zip", name);
  } else if (get && !strcmp(sub, "trained_model"))
    trained_model(api, req, id);
  else if (get && !strcmp(sub, "logs"))
    logs(api, req, id, job);
  else if (get && !strcmp(sub, "loglines"))
    loglines(api, req, id, job);
  else if (get && !strcmp(sub, "emetrics"))
    emetrics(api, req, id, job);
  else if (get && !strcmp(sub, "explain"))
    explain(api, req, id, job);
  else
    ffdl_http_error(req, 405, "Method Not Allowed", "no such operation on a model");
  json_decref(job);
}

/* Splits "/prefix/ID/sub" into ID and sub (in the request pool). */
static void split_id(h2o_req_t *req, const char *rest, const char **id, const char **sub) {
  size_t n = strcspn(rest, "/");
  *id = h2o_strdup(&req->pool, rest, n).base;
  *sub = rest[n] == '/' ? rest + n + 1 : "";
}

static void route(ffdl_api *api, h2o_req_t *req);

void ffdl_api_handle(void *ud, h2o_req_t *req) {
  ffdl_api *api = ud;
  api->requests++;
  uint64_t start = uv_hrtime();
  const char *path = ffdl_http_path(req);
  route(api, req);
  /* streams answer later; their status is known at start. A reload answers
   * when its build has ended (status 0 until then) and counts itself. */
  if (req->res.status != 0)
    observe_latency(api, path, req->res.status, (double)(uv_hrtime() - start) / 1e9);
}

static void route(ffdl_api *api, h2o_req_t *req) {
  const char *path = ffdl_http_path(req);
  if (!strcmp(path, "/health")) return ffdl_http_text(req, 200, "text/plain", "OK", 2);
  if (!strcmp(path, "/metrics")) return metrics_text(api, req);
  if (!strcmp(path, "/v1/openapi.json"))
    return ffdl_http_file(req, api->o.openapi, "application/json", NULL);
  if (strncmp(path, "/v1/", 4) != 0) return ffdl_http_error(req, 404, "Not Found", "no such path");
  caller who;
  if (authenticate(api, req, &who) != 0) {
    ffdl_http_header(req, "www-authenticate", "Bearer realm=\"ffdl\"");
    return ffdl_http_error(req, 401, "Unauthorized",
                           "a valid token is required (Authorization: "
                           "Bearer TOKEN, or basic auth)");
  }
  const char *id, *sub;
  if (!strcmp(path, "/v1/models")) {
    if (ffdl_http_method_is(req, "POST")) return create_model(api, req, &who);
    if (ffdl_http_method_is(req, "GET")) return list_models(api, req, &who);
    return ffdl_http_error(req, 405, "Method Not Allowed", "/v1/models: GET or POST");
  }
  if (!strncmp(path, "/v1/models/", 11)) {
    split_id(req, path + 11, &id, &sub);
    return job_route(api, req, &who, id, sub);
  }
  if (!strncmp(path, "/v1/logs/", 9)) {
    split_id(req, path + 9, &id, &sub);
    if (strcmp(sub, "loglines") && strcmp(sub, "emetrics"))
      return ffdl_http_error(req, 404, "Not Found", "no such path");
    return job_route(api, req, &who, id, sub);
  }
  if (!strncmp(path, "/v1/users", 9)) return users_route(api, req, &who, path + 9);
  if (!strncmp(path, "/v1/policies", 12)) return policies_route(api, req, &who, path + 12);
  ffdl_http_error(req, 404, "Not Found", "no such path");
}

void ffdl_api_on_line(ffdl_api *api, const char *id, int learner, const char *line, size_t len) {
  if (learner != 1) return; /* the stream is learner 1's log, as FfDL's was */
  for (follower *f = api->followers; f; f = f->next) {
    if (strcmp(f->id, id) != 0) continue;
    ffdl_stream_write(f->stream, line, len);
    ffdl_stream_write(f->stream, "\n", 1);
  }
}

static void count_failure(ffdl_api *api, const char *id) {
  api->failed++;
  json_t *job = ffdl_jobstore_get(api->o.store, id);
  const char *code = json_string_value(json_object_get(job, "error_code"));
  if (!code) code = "none";
  json_t *seen = json_object_get(api->failed_by_code, code);
  json_object_set_new(api->failed_by_code, code, json_integer(json_integer_value(seen) + 1));
  json_decref(job);
}

/* The uploaded model code of a job that ended: its copy lives in the job's
 * directory and its zip in the results, so the upload itself can go. */
static void remove_upload(ffdl_api *api, const char *id) {
  json_t *job = ffdl_jobstore_get(api->o.store, id);
  const char *dir = json_string_value(json_object_get(json_object_get(job, "extra"), "model_dir"));
  char uploads[4200];
  snprintf(uploads, sizeof uploads, "%s/uploads/", api->o.home);
  if (dir && !strncmp(dir, uploads, strlen(uploads)) && !strstr(dir, ".."))
    ffdl_localstore_remove_tree(dir);
  json_decref(job);
}

void ffdl_api_on_end(ffdl_api *api, const char *id, const char *status) {
  remove_upload(api, id);
  if (!strcmp(status, "COMPLETED"))
    api->completed++;
  else if (!strcmp(status, "FAILED"))
    count_failure(api, id);
  else if (!strcmp(status, "HALTED"))
    api->halted++;
  for (follower *f = api->followers, *next; f; f = next) {
    next = f->next;
    if (strcmp(f->id, id) == 0) ffdl_stream_finish(f->stream); /* on_close unlinks it */
  }
}
