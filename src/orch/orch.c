/*
 * orch.c: the job state machine and the scheduling cycle.
 * Owns: job lifecycle, admission/order/placement/retry hook calls (all
 * through ffdl_policy_call), resource reservations, the learner
 * environment, staging and storing (on the thread pool). Must not: know
 * which backend runs learners, speak HTTP, or block the loop.
 */
#define _GNU_SOURCE /* vasprintf, stpcpy */
#include "orch/orch.h"
#include "core/error.h"
#include "core/log.h"
#include "core/str.h"
#include "orch/metrics.h"
#include "orch/s3stage.h"
#include "orch/sched.h"
#include "policy/ljson.h"
#include "policy/spec.h"
#include "store/localstore.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TAIL_LINES 20
#define MAX_LEARNERS 1024

typedef enum { QUEUED, PENDING, DOWNLOADING, PROCESSING, STORING, COMPLETED, FAILED, HALTED } state;
static const char *const state_names[] = {"QUEUED",  "PENDING",   "DOWNLOADING", "PROCESSING",
                                          "STORING", "COMPLETED", "FAILED",      "HALTED"};

typedef struct job job;

typedef struct {
  job *job;
  int index; /* 1-based learner id */
  int node;  /* cluster node index */
  int *gpu_ids;
  ffdl_learner *handle;
  int running;
} learner_slot;

typedef struct {
  int set;
  ffdl_exit_kind kind;
  int exit_code, signal, learner;
} failure_info;

struct job {
  ffdl_orch *o;
  char id[64];
  json_t *spec;
  char *model_dir;
  char *interpreter; /* the framework's local interpreter, or NULL */
  char *dir;         /* <home>/jobs/<id> */
  char *results_dir; /* <results>/<id> */
  state st;
  int attempt, max_attempts, learners, priority;
  ffdl_request req;
  int64_t submitted_ms;
  int staged, halting, eligible, work_busy, wipe_checkpoint;
  ffdl_s3stage *s3_staging; /* the S3 results check or training-data download while it runs */
  ffdl_sched_job sj;        /* the job as the scheduler sees it */
  learner_slot *slots;
  int running;
  failure_info failure;
  char *tail[TAIL_LINES];
  int tail_next;
  char *wait_reason;
  char *last_decision[5]; /* per hook_kind: to log changes only */
  ffdl_metrics *metrics;
  json_t *last_metrics; /* {grouplabel: record} */
  uv_timer_t retry_timer;
  uv_timer_t emetrics_timer;
  long emetrics_offset;
  int timers_open;
  job *next;
};

struct ffdl_orch {
  ffdl_orch_opts o;
  char *home, *results, *root;
  ffdl_sched *sched;
  job *jobs;
  uv_timer_t cycle_timer;
  int cycle_scheduled;
};

/* ---- small helpers ---------------------------------------------------- */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int is_terminal(state s) {
  return s == COMPLETED || s == FAILED || s == HALTED;
}

static void make_id(char *id) {
  static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  unsigned char raw[10];
  /* straight from the kernel: through stdio, every id cost a 4 KiB read of
   * /dev/urandom (6% of a restart's CPU with 20,000 queued jobs) */
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
    for (size_t i = 0; i < sizeof raw; i++)
      raw[i] = (unsigned char)(rand() ^ (int)now_ms());
  }
  char *p = id + sprintf(id, "training-");
  for (size_t i = 0; i < sizeof raw; i++)
    *p++ = alphabet[raw[i] % (sizeof alphabet - 1)];
  *p = '\0';
}

static job *find_job(const ffdl_orch *o, const char *id) {
  for (job *j = o->jobs; j; j = j->next)
    if (strcmp(j->id, id) == 0) return j;
  return NULL;
}

static void schedule_cycle(ffdl_orch *o);
static void finish(job *j, state st, const char *reason, const char *code);

static void remember_line(job *j, int learner, const char *line, size_t len) {
  free(j->tail[j->tail_next]);
  j->tail[j->tail_next] = ffdl_strdup_printf("[learner %d] %.*s", learner, (int)len, line);
  j->tail_next = (j->tail_next + 1) % TAIL_LINES;
}

/* The last log lines, oldest first, one per line (caller frees). */
static char *tail_text(const job *j) {
  size_t cap = 1, len = 0;
  for (int i = 0; i < TAIL_LINES; i++)
    if (j->tail[i]) cap += strlen(j->tail[i]) + 1;
  char *out = malloc(cap);
  if (!out) return NULL;
  out[0] = '\0';
  for (int k = 0; k < TAIL_LINES; k++) {
    const char *line = j->tail[(j->tail_next + k) % TAIL_LINES];
    if (!line) continue;
    len += (size_t)sprintf(out + len, "%s\n", line);
  }
  return out;
}

/* The job is in state ST, which the store holds already: tell the observer. */
static void announce(job *j, state st, const char *reason, const char *code) {
  ffdl_orch *o = j->o;
  j->st = st;
  if (o->o.observer && o->o.observer->on_transition)
    o->o.observer->on_transition(o->o.observer_ud, j->id, state_names[st], reason, code);
}

static void transition(job *j, state st, const char *reason, const char *code) {
  if (ffdl_jobstore_transition(j->o->o.store, j->id, state_names[st], reason, code, now_ms()) != 0)
    ffdl_log(FFDL_LOG_ERROR, "%s: cannot record %s in the store", j->id, state_names[st]);
  announce(j, st, reason, code);
}

/* ---- hook calls --------------------------------------------------------- */

static lua_State *lua_of(ffdl_orch *o) {
  return ffdl_sandbox_state(ffdl_generation_sandbox(o->o.gen));
}

/* Pushes policies/FILE.lua's function NAME; 0 when it is a function. */
static int push_hook(ffdl_orch *o, const char *file, const char *name) {
  lua_State *L = lua_of(o);
  ffdl_generation_push_policy(o->o.gen, file);
  if (lua_istable(L, -1))
    ffdl_raw_field(L, -1, name);
  else
    lua_pushnil(L);
  lua_remove(L, -2);
  return lua_isfunction(L, -1) ? 0 : -1;
}

/* ---- the scheduler's decisions ------------------------------------------ */

typedef enum { HOOK_ADMIT, HOOK_ORDER, HOOK_PLACE, HOOK_RETRY, HOOK_HOLD, HOOK_COUNT } hook_kind;
static const char *const hook_names[HOOK_COUNT] = {"admit", "order", "place", "retry", "hold"};

/* Appends to the job's decision log when the outcome or reason changed
 * since its last decision of this kind, with what the policy explained. */
static void record_decision_with(job *j, hook_kind hook, const char *outcome, const char *reason,
                                 json_t *explained) {
  char *key = ffdl_strdup_printf("%s|%s", outcome, reason ? reason : "");
  if (key && j->last_decision[hook] && !strcmp(key, j->last_decision[hook])) {
    free(key);
    json_decref(explained);
    return;
  }
  free(j->last_decision[hook]);
  j->last_decision[hook] = key;
  json_t *d = json_pack("{s:I,s:s,s:s,s:s,s:s?,s:o}", "time_ms", (json_int_t)now_ms(), "generation",
                        ffdl_generation_hash(j->o->o.gen), "hook", hook_names[hook], "outcome",
                        outcome, "reason", reason, "explanations", explained);
  if (d) ffdl_jobstore_add_decision(j->o->o.store, j->id, d);
  json_decref(d);
}

static void record_decision(job *j, hook_kind hook, const char *outcome, const char *reason) {
  record_decision_with(j, hook, outcome, reason, ffdl_generation_take_explanations(j->o->o.gen));
}

static void set_waiting(job *j, const char *reason) {
  if (j->wait_reason && strcmp(j->wait_reason, reason) == 0) return;
  free(j->wait_reason);
  j->wait_reason = strdup(reason);
  ffdl_orch *o = j->o;
  ffdl_log(FFDL_LOG_INFO, "%s: waits: %s", j->id, reason);
  if (o->o.observer && o->o.observer->on_waiting)
    o->o.observer->on_waiting(o->o.observer_ud, j->id, reason);
}

static void sched_decision(void *ud, ffdl_sched_job *sj, const char *hook, const char *outcome,
                           const char *reason, json_t *explained) {
  (void)ud;
  hook_kind kind = HOOK_PLACE;
  for (int k = 0; k < HOOK_COUNT; k++)
    if (strcmp(hook_names[k], hook) == 0) kind = (hook_kind)k;
  record_decision_with(sj->owner, kind, outcome, reason, explained);
}

static void sched_waiting(void *ud, ffdl_sched_job *sj, const char *reason) {
  (void)ud;
  set_waiting(sj->owner, reason);
}

/* The placement goes to the store, so that a restarted server can hold the
 * same resources for the learners it reattaches. */
static void save_placement(job *j) {
  json_t *nodes = json_array();
  for (int i = 0; i < j->learners; i++)
    json_array_append_new(nodes,
                          json_string(ffdl_cluster_node_name(j->o->o.cluster, j->sj.nodes[i])));
  ffdl_jobstore_set_extra(j->o->o.store, j->id, "placement", nodes);
  json_decref(nodes);
}

/* The learner slots point at what the scheduler reserved. */
static void take_placement(job *j) {
  int per = j->req.gpus > 0 ? j->req.gpus : 1;
  for (int i = 0; i < j->learners; i++) {
    j->slots[i].node = j->sj.nodes[i];
    j->slots[i].gpu_ids = j->sj.gpu_ids + i * per;
  }
}

static void start_staging(job *j);

static void sched_placed(void *ud, ffdl_sched_job *sj, const char *how) {
  (void)ud;
  job *j = sj->owner;
  take_placement(j);
  save_placement(j);
  free(j->wait_reason);
  j->wait_reason = NULL;
  transition(j, PENDING, how, NULL);
  start_staging(j);
}

static void sched_never_fits(void *ud, ffdl_sched_job *sj, const char *why) {
  (void)ud;
  finish(sj->owner, FAILED, why, "S100");
}

static const ffdl_sched_callbacks sched_callbacks = {sched_decision, sched_waiting, sched_placed,
                                                     sched_never_fits};

static double now_s(void) {
  return (double)now_ms() / 1000.0;
}

static void release(job *j) {
  ffdl_sched_release(j->o->sched, &j->sj, now_s());
}

/* J waits for placement again (submitted, retried, or requeued). */
static void enqueue(job *j) {
  j->sj.attempt = j->attempt;
  j->sj.fit_checked = 0;
  if (ffdl_sched_enqueue(j->o->sched, &j->sj, now_s()) != FFDL_OK)
    ffdl_log(FFDL_LOG_ERROR, "%s: out of memory while queueing", j->id);
  schedule_cycle(j->o);
}

static void run_cycle(uv_timer_t *timer) {
  ffdl_orch *o = timer->data;
  o->cycle_scheduled = 0;
  ffdl_sched_cycle(o->sched, now_s());
}

static void schedule_cycle(ffdl_orch *o) {
  if (o->cycle_scheduled) return;
  o->cycle_scheduled = 1;
  uv_timer_start(&o->cycle_timer, run_cycle, 0, 0);
}

/* ---- staging and storing, on the thread pool ------------------------ */

typedef enum { WORK_STAGE, WORK_STORE, WORK_COLLECT_LOGS } work_kind;

typedef struct {
  uv_work_t req;
  job *j;
  work_kind kind;
  /* inputs, computed on the loop thread */
  char *data_src;
  char *interpreter;
  int stage_data, wipe_checkpoint, learners;
  state final_state; /* WORK_COLLECT_LOGS: how the job ends afterwards */
  char *final_reason;
  char final_code[8]; /* copied: staging's codes live in its own memory */
  /* outputs */
  int rc;
  char *err;
  const char *code;
} work;

static char *job_path(const job *j, const char *rel) {
  return ffdl_strdup_printf("%s/%s", j->dir, rel);
}

/* Learner I's log in the job directory (caller frees). */
static char *learner_log(const job *j, int i) {
  return ffdl_strdup_printf("%s/learner-%d/logs/training-log.txt", j->dir, i);
}

static void make_dirs(work *w) {
  const job *j = w->j;
  static const char *const dirs[] = {"data", "model", "result", "checkpoint", "bin", NULL};
  for (const char *const *d = dirs; *d; d++) {
    char *p = job_path(j, *d);
    ffdl_localstore_mkdirs(p, 0755);
    free(p);
  }
  for (int i = 1; i <= w->learners; i++) {
    char *logs = ffdl_strdup_printf("%s/learner-%d/logs", j->dir, i);
    char *state_dir = ffdl_strdup_printf("%s/learner-%d/state/logs", j->dir, i);
    ffdl_localstore_mkdirs(logs, 0755);
    ffdl_localstore_mkdirs(state_dir, 0755);
    free(logs);
    free(state_dir);
  }
}

/* python3 and python in the job's bin/ run the framework's interpreter, so
 * that an FfDL command such as "python3 train.py" gets the right one. They
 * are small scripts, not links: a virtual environment's python finds its
 * environment from the path it was started as. */
static void link_interpreter(work *w) {
  if (!w->interpreter) return;
  static const char *const names[] = {"python3", "python", NULL};
  for (const char *const *n = names; *n; n++) {
    char *path = ffdl_strdup_printf("%s/bin/%s", w->j->dir, *n);
    FILE *f = fopen(path, "w");
    if (f) {
      fprintf(f, "#!/bin/sh\nexec '%s' \"$@\"\n", w->interpreter);
      fclose(f);
      chmod(path, 0755);
    } else {
      ffdl_log(FFDL_LOG_WARN, "%s: cannot write %s: %s", w->j->id, path, strerror(errno));
    }
    free(path);
  }
}

/* Before a first staging, what an earlier run of the job staged goes: a
 * job requeued after a server restart stages from scratch, and its
 * learners must not see files of the interrupted staging (an object
 * deleted from the bucket since, a copy cut short). */
static void drop_staged_inputs(const job *j) {
  static const char *const inputs[] = {"data", "model", NULL};
  for (const char *const *d = inputs; *d; d++) {
    char *p = job_path(j, *d);
    ffdl_localstore_remove_tree(p);
    free(p);
  }
}

static void stage(work *w) {
  job *j = w->j;
  if (w->stage_data) drop_staged_inputs(j);
  make_dirs(w);
  link_interpreter(w);
  if (w->wipe_checkpoint) {
    char *cp = job_path(j, "checkpoint");
    ffdl_localstore_remove_tree(cp);
    ffdl_localstore_mkdirs(cp, 0755);
    free(cp);
  }
  if (!w->stage_data) return;
  if (j->model_dir) {
    char *model = job_path(j, "model");
    char *code_dir = ffdl_strdup_printf("%s/_submitted_code", j->results_dir);
    char *zip = ffdl_strdup_printf("%s/model.zip", code_dir);
    ffdl_localstore_mkdirs(code_dir, 0755);
    /* the model directory may hold the runtime's own (ffdl-run started
     * below it): those stay out of the copy and the zip */
    const char *const runtime_dirs[] = {j->o->home, j->o->results, NULL};
    w->rc = ffdl_localstore_copy_model(j->model_dir, model, runtime_dirs, &w->err);
    if (w->rc == 0) w->rc = ffdl_localstore_zip_dir(j->model_dir, zip, runtime_dirs, &w->err);
    if (w->rc != 0) w->code = "S301";
    free(model);
    free(code_dir);
    free(zip);
    if (w->rc != 0) return;
  }
  if (w->data_src) {
    char *data = job_path(j, "data");
    uint64_t bytes = 0;
    w->rc = ffdl_localstore_copy_tree(w->data_src, data, &bytes, &w->err);
    if (w->rc != 0)
      w->code = "S302";
    else
      ffdl_log(FFDL_LOG_INFO, "%s: staged %llu bytes of training data", j->id,
               (unsigned long long)bytes);
    free(data);
  }
}

static void copy_logs(work *w) {
  job *j = w->j;
  for (int i = 1; i <= w->learners; i++) {
    char *src = learner_log(j, i);
    char *dst_dir = ffdl_strdup_printf("%s/learner-%d", j->results_dir, i);
    char *dst = ffdl_strdup_printf("%s/training-log.txt", dst_dir);
    char *err = NULL;
    ffdl_localstore_mkdirs(dst_dir, 0755);
    if (access(src, F_OK) == 0 && ffdl_localstore_copy_tree(src, dst, NULL, &err) != 0 &&
        w->rc == 0) {
      w->rc = FFDL_EIO;
      w->err = err;
      w->code = "S303";
    } else {
      free(err);
    }
    free(src);
    free(dst_dir);
    free(dst);
  }
}

static void store_results(work *w) {
  char *src = job_path(w->j, "result");
  char *dst = ffdl_strdup_printf("%s/model", w->j->results_dir);
  w->rc = ffdl_localstore_copy_tree(src, dst, NULL, &w->err);
  if (w->rc != 0) w->code = "S303";
  free(src);
  free(dst);
  copy_logs(w);
}

/* The job's copy of its training data, once it has ended: each job would
 * otherwise keep a whole data set on disk for good. */
static void drop_staged_data(work *w) {
  char *data = job_path(w->j, "data");
  if (data && access(data, F_OK) == 0 && ffdl_localstore_remove_tree(data) != FFDL_OK)
    ffdl_log(FFDL_LOG_WARN, "%s: cannot remove the staged data %s: %s", w->j->id, data,
             strerror(errno));
  free(data);
}

static void run_work(uv_work_t *req) {
  work *w = req->data;
  if (w->kind == WORK_STAGE) {
    stage(w);
    return;
  }
  if (w->kind == WORK_STORE)
    store_results(w);
  else
    copy_logs(w);
  drop_staged_data(w); /* STORING and the collection of logs come only at the end */
}

static void after_stage(work *w);
static void after_store(work *w);
static void after_collect(work *w);

static void work_done(uv_work_t *req, int status) {
  work *w = req->data;
  job *j = w->j;
  j->work_busy = 0;
  if (status == UV_ECANCELED) w->rc = FFDL_EIO;
  if (w->kind == WORK_STAGE)
    after_stage(w);
  else if (w->kind == WORK_STORE)
    after_store(w);
  else
    after_collect(w);
  free(w->data_src);
  free(w->interpreter);
  free(w->err);
  free(w->final_reason);
  free(w);
}

static work *new_work(job *j, work_kind kind) {
  work *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->req.data = w;
  w->j = j;
  w->kind = kind;
  w->learners = j->learners;
  return w;
}

static void queue_work(work *w) {
  w->j->work_busy = 1;
  if (uv_queue_work(w->j->o->o.loop, &w->req, run_work, work_done) != 0) {
    w->rc = FFDL_EIO;
    w->err = strdup("cannot queue work on the thread pool");
    work_done(&w->req, 0);
  }
}

/* Where a local or host-mount data store keeps the training data. */
static char *data_source(job *j) {
  json_t *stores = json_object_get(j->spec, "data_stores");
  json_t *store = json_array_get(stores, 0);
  if (!store) return NULL;
  const char *type = json_string_value(json_object_get(store, "type"));
  const char *container =
      json_string_value(json_object_get(json_object_get(store, "training_data"), "container"));
  json_t *conn = json_object_get(store, "connection");
  const char *path = json_string_value(json_object_get(conn, "path"));
  if (ffdl_s3stage_is_s3(store)) return NULL; /* downloaded after the local staging */
  if (!container) return NULL;
  if (type && strcmp(type, "local") == 0 && !path)
    return ffdl_strdup_printf("%s/datasets/%s", j->o->home, container);
  return ffdl_strdup_printf("%s/%s", path ? path : ".", container);
}

static void start_staging(job *j) {
  transition(j, DOWNLOADING, j->staged ? "reusing the staged data" : "staging model code and data",
             NULL);
  work *w = new_work(j, WORK_STAGE);
  if (!w) return finish(j, FAILED, "out of memory", "S302");
  w->stage_data = !j->staged;
  w->wipe_checkpoint = j->wipe_checkpoint;
  j->wipe_checkpoint = 0;
  if (w->stage_data) w->data_src = data_source(j);
  if (w->data_src && access(w->data_src, R_OK) != 0) {
    char *why = ffdl_strdup_printf("training data %s: %s", w->data_src, strerror(errno));
    free(w->data_src);
    free(w);
    finish(j, FAILED, why, "S302");
    free(why);
    return;
  }
  w->interpreter = j->interpreter ? strdup(j->interpreter) : NULL;
  queue_work(w);
}

/* ---- learners -------------------------------------------------------- */

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 29500;
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  int port = 29500;
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
      getsockname(fd, (struct sockaddr *)&addr, &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

typedef struct {
  char **items;
  size_t n, cap;
} strv;

static void strv_add(strv *v, char *s) {
  if (!s) return;
  if (v->n + 2 > v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 32;
    char **grown = realloc(v->items, cap * sizeof *grown);
    if (!grown) {
      free(s);
      return;
    }
    v->items = grown;
    v->cap = cap;
  }
  v->items[v->n++] = s;
  v->items[v->n] = NULL;
}

static void strv_free(strv *v) {
  for (size_t i = 0; i < v->n; i++)
    free(v->items[i]);
  free(v->items);
}

/* 'x' with every ' escaped, for /bin/sh. */
static char *shell_quote(const char *text) {
  size_t extra = 3;
  for (const char *p = text; *p; p++)
    extra += *p == '\'' ? 3 : 0;
  char *out = malloc(strlen(text) + extra);
  if (!out) return NULL;
  char *q = out;
  *q++ = '\'';
  for (const char *p = text; *p; p++) {
    if (*p == '\'')
      q = stpcpy(q, "'\\''");
    else
      *q++ = *p;
  }
  *q++ = '\'';
  *q = '\0';
  return out;
}

/* The manifest's command with args appended as --key value. */
static char *full_command(const job *j) {
  const char *cmd =
      json_string_value(json_object_get(json_object_get(j->spec, "framework"), "command"));
  char *out = strdup(cmd ? cmd : "true");
  json_t *args = json_object_get(j->spec, "args");
  const char *key;
  json_t *value;
  json_object_foreach(args, key, value) {
    char *text = json_is_string(value) ? strdup(json_string_value(value))
                                       : json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT);
    char *quoted = text ? shell_quote(text) : NULL;
    char *longer = quoted ? ffdl_strdup_printf("%s --%s %s", out, key, quoted) : NULL;
    free(text);
    free(quoted);
    if (longer) free(out), out = longer;
  }
  return out;
}

static char *tf_config(int learners, const int *ports, int index) {
  json_t *workers = json_array();
  for (int i = 0; i < learners; i++)
    json_array_append_new(workers, json_sprintf("127.0.0.1:%d", ports[i]));
  json_t *cfg = json_pack("{s:{s:o},s:{s:s,s:i}}", "cluster", "worker", workers, "task", "type",
                          "worker", "index", index);
  char *text = json_dumps(cfg, JSON_COMPACT);
  json_decref(cfg);
  return text;
}

static void copy_parent_env(strv *env, const job *j) {
  static const char *const keep[] = {
      "HOME", "USER", "LANG", "LC_ALL", "TERM", "TMPDIR", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
      "TZ",   NULL};
  for (const char *const *k = keep; *k; k++) {
    const char *v = getenv(*k);
    if (v) strv_add(env, ffdl_strdup_printf("%s=%s", *k, v));
  }
  const char *path = getenv("PATH");
  strv_add(env, ffdl_strdup_printf("PATH=%s/bin:%s", j->dir, path ? path : "/usr/bin:/bin"));
}

static void learner_env(const job *j, int i, int master_port, const int *tf_ports, strv *env) {
  const learner_slot *s = &j->slots[i - 1];
  copy_parent_env(env, j);
  strv_add(env, strdup("PYTHONUNBUFFERED=1"));
  strv_add(env, ffdl_strdup_printf("TRAINING_ID=%s", j->id));
  strv_add(env, ffdl_strdup_printf("DATA_DIR=%s/data", j->dir));
  strv_add(env, ffdl_strdup_printf("MODEL_DIR=%s/model", j->dir));
  strv_add(env, ffdl_strdup_printf("RESULT_DIR=%s/result", j->dir));
  strv_add(env, ffdl_strdup_printf("CHECKPOINT_DIR=%s/checkpoint", j->dir));
  strv_add(env, ffdl_strdup_printf("LOG_DIR=%s/learner-%d/logs", j->dir, i));
  strv_add(env, ffdl_strdup_printf("JOB_STATE_DIR=%s/learner-%d/state", j->dir, i));
  strv_add(env, ffdl_strdup_printf("LEARNER_ID=%d", i));
  strv_add(env, ffdl_strdup_printf("LEARNER_NAME_PREFIX=%s-learner", j->id));
  strv_add(env, ffdl_strdup_printf("NUM_LEARNERS=%d", j->learners));
  strv_add(env, ffdl_strdup_printf("GPU_COUNT=%d", j->req.gpus));
  strv_add(env, ffdl_strdup_printf("RANK=%d", i - 1));
  strv_add(env, ffdl_strdup_printf("LOCAL_RANK=%d", i - 1));
  strv_add(env, ffdl_strdup_printf("WORLD_SIZE=%d", j->learners));
  strv_add(env, strdup("MASTER_ADDR=127.0.0.1"));
  strv_add(env, ffdl_strdup_printf("MASTER_PORT=%d", master_port));
  strv_add(env, ffdl_strdup_printf("FFDL_RENDEZVOUS=127.0.0.1:%d", master_port));
  strv_add(env, ffdl_strdup_printf("FFDL_ATTEMPT=%d", j->attempt));
  char gpus[FFDL_MAX_NODE_GPUS * 4 + 1] = "";
  for (int g = 0; g < j->req.gpus; g++)
    sprintf(gpus + strlen(gpus), "%s%d", g ? "," : "", s->gpu_ids[g]);
  strv_add(env, ffdl_strdup_printf("CUDA_VISIBLE_DEVICES=%s", gpus));
  if (j->learners > 1) {
    char *tf = tf_config(j->learners, tf_ports, i - 1);
    if (tf) strv_add(env, ffdl_strdup_printf("TF_CONFIG=%s", tf));
    free(tf);
  }
  const char *key;
  json_t *value;
  json_object_foreach(json_object_get(j->spec, "env"), key, value)
      strv_add(env, ffdl_strdup_printf("%s=%s", key,
                                       json_string_value(value) ? json_string_value(value) : ""));
}

static void on_line(void *ud, ffdl_learner *handle, const char *line, size_t len);
static void on_exit_cb(void *ud, ffdl_learner *handle, ffdl_exit_kind kind, int code, int sig);
static const ffdl_learner_callbacks learner_callbacks = {on_line, on_exit_cb};
static void start_emetrics(job *j);
static void learners_finished(job *j);

static int launch_one(job *j, int i, const char *command, int master_port, const int *tf_ports,
                      char **err) {
  learner_slot *s = &j->slots[i - 1];
  strv env = {0};
  learner_env(j, i, master_port, tf_ports, &env);
  char *cwd = job_path(j, "model");
  char *log = learner_log(j, i);
  char *exit_path = ffdl_strdup_printf("%s/learner-%d/exit_status", j->dir, i);
  unlink(exit_path); /* an earlier attempt's */
  const char *argv[] = {"/bin/sh", "-c", command, NULL};
  ffdl_launch_spec spec = {.argv = argv,
                           .env = (const char *const *)env.items,
                           .cwd = cwd,
                           .log_path = log,
                           .exit_path = exit_path,
                           .memory_limit_bytes = j->req.memory};
  int rc = ffdl_backend_launch(j->o->o.backend, &spec, &learner_callbacks, s, &s->handle, err);
  if (rc == 0) {
    s->running = 1;
    j->running++;
    ffdl_jobstore_learner(j->o->o.store, j->id, i, j->attempt, ffdl_learner_pid(s->handle),
                          "RUNNING", -1, 0, now_ms());
  }
  strv_free(&env);
  free(cwd);
  free(log);
  free(exit_path);
  return rc;
}

/* Appends a platform warning to each learner's log before it starts, where
 * `ffdl logs` shows it next to what the learner then prints. */
static void warn_in_logs(job *j, const char *warning) {
  for (int i = 1; i <= j->learners; i++) {
    char *path = learner_log(j, i);
    FILE *f = path ? fopen(path, "a") : NULL;
    if (f) {
      fprintf(f, "ffdl: warning: %s\n", warning);
      fclose(f);
    }
    free(path);
  }
}

/* WARNING (or NULL) comes from staging: it goes in the learners' logs and in
 * the reason of the PROCESSING transition. */
static void launch_learners(job *j, const char *warning) {
  char *command = full_command(j);
  int master_port = free_port();
  int *tf_ports = calloc((size_t)j->learners, sizeof *tf_ports);
  for (int i = 0; tf_ports && i < j->learners; i++)
    tf_ports[i] = free_port();
  memset(&j->failure, 0, sizeof j->failure);
  if (warning) warn_in_logs(j, warning);
  char *said = warning ? ffdl_strdup_printf("warning: %s. ", warning) : NULL;
  char *why = ffdl_strdup_printf("%s%d learner%s running: %s", said ? said : "", j->learners,
                                 j->learners > 1 ? "s" : "", command);
  transition(j, PROCESSING, why, NULL);
  free(why);
  free(said);
  char *err = NULL;
  for (int i = 1; i <= j->learners; i++) {
    if (launch_one(j, i, command, master_port, tf_ports, &err) == 0) continue;
    /* the gang starts whole or not at all */
    j->failure = (failure_info){.set = 1, .kind = FFDL_EXIT_CODE, .exit_code = 127, .learner = i};
    remember_line(j, i, err, strlen(err));
    for (int k = 0; k < i - 1; k++)
      if (j->slots[k].running) ffdl_backend_kill(j->o->o.backend, j->slots[k].handle, 0);
    free(err);
    break;
  }
  free(command);
  free(tf_ports);
  if (j->running == 0)
    learners_finished(j);
  else
    start_emetrics(j);
}

static void record_metric(job *j, json_t *record) {
  ffdl_orch *o = j->o;
  ffdl_jobstore_add_metric(o->o.store, j->id, record);
  const char *label = json_string_value(json_object_get(record, "grouplabel"));
  json_object_set(j->last_metrics, label ? label : "", record);
  if (o->o.observer && o->o.observer->on_metric)
    o->o.observer->on_metric(o->o.observer_ud, j->id, record);
}

static void on_line(void *ud, ffdl_learner *handle, const char *line, size_t len) {
  (void)handle;
  learner_slot *s = ud;
  job *j = s->job;
  remember_line(j, s->index, line, len);
  ffdl_orch *o = j->o;
  if (o->o.observer && o->o.observer->on_line)
    o->o.observer->on_line(o->o.observer_ud, j->id, s->index, line, len);
  if (s->index != 1 || ffdl_metrics_from_file(j->metrics)) return;
  json_t *record = ffdl_metrics_line(j->metrics, line, len);
  if (record) record_metric(j, record);
  json_decref(record);
}

/* emetrics_file: new lines of the file named by evaluation_metrics.in */
static char *emetrics_path(const job *j) {
  const char *in = ffdl_metrics_file(j->metrics);
  if (!in) return ffdl_strdup_printf("%s/learner-1/state/logs/evaluation-metrics.txt", j->dir);
  char *state_dir = ffdl_strdup_printf("%s/learner-1/state", j->dir);
  const char *vars[] = {"${JOB_STATE_DIR}", "$JOB_STATE_DIR"};
  char *out = strdup(in);
  for (int v = 0; v < 2 && out; v++) {
    char *at = strstr(out, vars[v]);
    if (!at) continue;
    char *next =
        ffdl_strdup_printf("%.*s%s%s", (int)(at - out), out, state_dir, at + strlen(vars[v]));
    free(out);
    out = next;
  }
  free(state_dir);
  return out;
}

static void poll_emetrics(uv_timer_t *t) {
  job *j = t->data;
  char *path = emetrics_path(j);
  FILE *f = path ? fopen(path, "r") : NULL;
  free(path);
  if (!f) return;
  if (fseek(f, j->emetrics_offset, SEEK_SET) == 0) {
    char line[8192];
    while (fgets(line, sizeof line, f)) {
      size_t len = strlen(line);
      if (len == 0 || line[len - 1] != '\n') break; /* a partial line: next time */
      j->emetrics_offset += (long)len;
      json_t *record = ffdl_metrics_emetrics_line(j->metrics, line, len - 1);
      if (record) record_metric(j, record);
      json_decref(record);
    }
  }
  fclose(f);
}

static void start_emetrics(job *j) {
  if (!ffdl_metrics_from_file(j->metrics)) return;
  uv_timer_start(&j->emetrics_timer, poll_emetrics, 250, 250);
}

static void on_exit_cb(void *ud, ffdl_learner *handle, ffdl_exit_kind kind, int code, int sig) {
  (void)handle;
  learner_slot *s = ud;
  job *j = s->job;
  s->running = 0;
  s->handle = NULL;
  j->running--;
  const char *status = kind == FFDL_EXIT_OK ? "COMPLETED" : j->halting ? "HALTED" : "FAILED";
  ffdl_jobstore_learner(j->o->o.store, j->id, s->index, j->attempt, 0, status, code, sig, now_ms());
  if (kind != FFDL_EXIT_OK && !j->failure.set && !j->halting) {
    j->failure = (failure_info){
        .set = 1, .kind = kind, .exit_code = code, .signal = sig, .learner = s->index};
    /* gang semantics: one learner failing stops the others */
    for (int k = 0; k < j->learners; k++)
      if (j->slots[k].running) ffdl_backend_kill(j->o->o.backend, j->slots[k].handle, 2000);
  }
  if (j->running == 0) learners_finished(j);
}

/* ---- endings: success, retry, failure, halt ------------------------- */

static const char *kind_name(ffdl_exit_kind kind) {
  switch (kind) {
  case FFDL_EXIT_SIGNAL:
    return "signal";
  case FFDL_EXIT_OOM:
    return "oom";
  case FFDL_EXIT_NODE_LOST:
    return "node_lost";
  default:
    return "exit";
  }
}

static char *describe_failure(const job *j) {
  const failure_info *f = &j->failure;
  if (f->kind == FFDL_EXIT_SIGNAL)
    return ffdl_strdup_printf("learner %d was killed by signal %d", f->learner, f->signal);
  if (f->kind == FFDL_EXIT_OOM)
    return ffdl_strdup_printf("learner %d ran out of memory", f->learner);
  if (f->kind == FFDL_EXIT_NODE_LOST)
    return ffdl_strdup_printf("learner %d lost its node", f->learner);
  return ffdl_strdup_printf("learner %d exited with code %d", f->learner, f->exit_code);
}

static void push_failure(lua_State *L, const job *j) {
  lua_createtable(L, 0, 6);
  lua_pushstring(L, kind_name(j->failure.kind));
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, j->failure.exit_code);
  lua_setfield(L, -2, "exit_code");
  lua_pushinteger(L, j->failure.signal);
  lua_setfield(L, -2, "signal");
  lua_pushinteger(L, j->failure.learner);
  lua_setfield(L, -2, "learner");
  lua_pushinteger(L, j->attempt);
  lua_setfield(L, -2, "attempt");
  lua_createtable(L, TAIL_LINES, 0);
  int n = 0;
  for (int k = 0; k < TAIL_LINES; k++) {
    const char *line = j->tail[(j->tail_next + k) % TAIL_LINES];
    if (!line) continue;
    lua_pushstring(L, line);
    lua_rawseti(L, -2, ++n);
  }
  lua_setfield(L, -2, "log_tail");
}

typedef struct {
  char action[16];
  double delay;
  char *reason;
} retry_decision;

/* retry.on_failure(job, failure, ctx); a broken hook means "fail". */
static void decide_retry(job *j, retry_decision *d) {
  ffdl_orch *o = j->o;
  lua_State *L = lua_of(o);
  snprintf(d->action, sizeof d->action, "fail");
  d->delay = 0;
  d->reason = NULL;
  if (push_hook(o, "retry", "on_failure") != 0) {
    lua_pop(L, 1);
    return;
  }
  j->sj.attempt = j->attempt;
  ffdl_sched_push_job(L, &j->sj);
  push_failure(L, j);
  ffdl_generation_push_ctx(o->o.gen, NULL);
  char *err = NULL;
  if (ffdl_policy_call(ffdl_generation_sandbox(o->o.gen), "on_failure", 3, 1, 0, &err) != 0) {
    d->reason = ffdl_strdup_printf("on_failure() failed: %s", err);
    free(err);
    return;
  }
  if (lua_istable(L, -1)) {
    ffdl_raw_field(L, -1, "action");
    ffdl_raw_field(L, -2, "delay");
    ffdl_raw_field(L, -3, "reason");
    const char *action = lua_tostring(L, -3);
    if (action &&
        (!strcmp(action, "restart") || !strcmp(action, "resume") || !strcmp(action, "fail")))
      snprintf(d->action, sizeof d->action, "%s", action);
    else
      d->reason = strdup("on_failure() must return {action = \"restart\"|\"resume\"|\"fail\"}");
    d->delay = lua_tonumber(L, -2);
    if (!d->reason && lua_tostring(L, -1)) d->reason = strdup(lua_tostring(L, -1));
    lua_pop(L, 3);
  } else {
    d->reason = strdup("on_failure() must return a table {action=, delay=, reason=}");
  }
  lua_pop(L, 1);
}

static void retry_ready(uv_timer_t *t) {
  job *j = t->data;
  if (j->st != QUEUED) return;
  j->eligible = 1;
  enqueue(j);
}

static void end_job(job *j, state st, const char *reason, const char *code);

static void handle_failure(job *j) {
  retry_decision d;
  decide_retry(j, &d);
  char *what = describe_failure(j);
  char *verdict = ffdl_strdup_printf("%s: %s%s%s", what, d.action, d.reason ? ", " : "",
                                     d.reason ? d.reason : "");
  record_decision(j, HOOK_RETRY, d.action, verdict);
  free(verdict);
  if (strcmp(d.action, "fail") == 0 || j->halting) {
    char *tail = tail_text(j);
    char *why = ffdl_strdup_printf("%s%s%s\nlast log lines:\n%s", what, d.reason ? ": " : "",
                                   d.reason ? d.reason : "", tail ? tail : "");
    end_job(j, FAILED, why, "C201");
    free(why);
    free(tail);
  } else {
    if (d.delay < 0 || d.delay != d.delay) d.delay = 0;
    char *why = ffdl_strdup_printf("%s; attempt %d of %d will %s in %.1f s%s%s", what,
                                   j->attempt + 1, j->max_attempts, d.action, d.delay,
                                   d.reason ? ": " : "", d.reason ? d.reason : "");
    j->attempt++;
    j->wipe_checkpoint = strcmp(d.action, "restart") == 0;
    j->eligible = 0;
    free(j->wait_reason);
    j->wait_reason = NULL;
    transition(j, QUEUED, why, NULL);
    free(why);
    uv_timer_start(&j->retry_timer, retry_ready, (uint64_t)(d.delay * 1000), 0);
  }
  free(what);
  free(d.reason);
}

static void learners_finished(job *j) {
  uv_timer_stop(&j->emetrics_timer);
  if (ffdl_metrics_from_file(j->metrics)) poll_emetrics(&j->emetrics_timer);
  release(j);
  if (j->halting) return end_job(j, HALTED, "halted: every learner was stopped", NULL);
  if (j->failure.set) return handle_failure(j);
  transition(j, STORING, "every learner succeeded; storing results", NULL);
  work *w = new_work(j, WORK_STORE);
  if (!w) return finish(j, FAILED, "out of memory", "S303");
  queue_work(w);
  schedule_cycle(j->o); /* resources are free for the next job */
}

static json_t *first_store(const job *j) {
  return json_array_get(json_object_get(j->spec, "data_stores"), 0);
}

/* Launches once staging is done, unless the job was halted or staging failed
 * (CODE set). Without CODE, MESSAGE is NULL or a warning for the user. */
static void staged(job *j, const char *code, const char *message) {
  if (j->halting) {
    release(j);
    return end_job(j, HALTED, "halted before the learners started", NULL);
  }
  if (code) {
    release(j);
    return end_job(j, FAILED, message ? message : "staging failed", code);
  }
  j->staged = 1;
  launch_learners(j, message);
}

static void s3_progress(void *ud, const char *what, uint64_t done, uint64_t total, int state) {
  job *j = ud;
  ffdl_orch *o = j->o;
  if (o->o.observer && o->o.observer->on_progress)
    o->o.observer->on_progress(o->o.observer_ud, j->id, what, done, total, state);
}

static void s3_staged(void *ud, const char *code, const char *message) {
  job *j = ud;
  j->s3_staging = NULL;
  staged(j, code, message);
}

/* The S3 part of a first staging: the training data into $DATA_DIR. */
static void download_training_data(job *j) {
  json_t *store = first_store(j);
  if (!ffdl_s3stage_is_s3(store) || !json_object_get(store, "training_data") || j->halting)
    return staged(j, NULL, NULL);
  char *data = job_path(j, "data");
  int rc =
      ffdl_s3stage_download(j->o->o.loop, store, data, s3_progress, s3_staged, j, &j->s3_staging);
  free(data);
  if (rc != 0) staged(j, "S302", "cannot start the S3 download (check the connection fields)");
}

static void results_checked(void *ud, const char *code, const char *message) {
  job *j = ud;
  j->s3_staging = NULL;
  if (code && !j->halting) return staged(j, code, message);
  download_training_data(j);
}

static void after_stage(work *w) {
  job *j = w->j;
  if (w->rc != 0) return staged(j, w->code ? w->code : "S302", w->err ? w->err : "staging failed");
  if (!w->stage_data) return staged(j, NULL, NULL); /* a retry reuses the staged data */
  json_t *store = first_store(j);
  if (!ffdl_s3stage_results_bucket(store) || j->halting) return download_training_data(j);
  /* a missing results bucket or refused credentials fail the job now, not
   * after it has trained */
  if (ffdl_s3stage_check_results(j->o->o.loop, store, j->id, results_checked, j, &j->s3_staging) !=
      0)
    staged(j, "S303", "cannot start checking the results bucket (check the connection fields)");
}

/* "s3://BUCKET/ID/" when J's results go to an S3 bucket, else NULL
 * (caller frees). */
static char *s3_results_url(const job *j) {
  const char *bucket = ffdl_s3stage_results_bucket(first_store(j));
  return bucket ? ffdl_strdup_printf("s3://%s/%s/", bucket, j->id) : NULL;
}

static void stored(void *ud, const char *code, const char *message) {
  job *j = ud;
  if (code) return finish(j, FAILED, message ? message : "storing results failed", code);
  if (j->halting) return finish(j, HALTED, "halted while storing; results kept", NULL);
  char *url = s3_results_url(j);
  char *reason = url ? ffdl_strdup_printf("results stored in %s", url) : NULL;
  finish(j, COMPLETED, reason ? reason : "results stored", NULL);
  free(reason);
  free(url);
}

static void after_store(work *w) {
  job *j = w->j;
  if (w->rc != 0) return stored(j, "S303", w->err ? w->err : "storing results failed");
  json_t *store = first_store(j);
  if (ffdl_s3stage_results_bucket(store)) {
    /* <training-id>/ in the results bucket: model/, learner logs, submitted code */
    if (ffdl_s3stage_upload(j->o->o.loop, store, j->id, j->results_dir, s3_progress, stored, j) ==
        0)
      return;
    return stored(j, "S303", "cannot start the S3 upload (check the connection fields)");
  }
  stored(j, NULL, NULL);
}

/* Logs go to the results store for every ending, not only success. */
static void end_job(job *j, state st, const char *reason, const char *code) {
  /* a job that never reached DOWNLOADING has nothing on disk to collect or drop */
  if (!j->staged && j->st != DOWNLOADING) return finish(j, st, reason, code);
  work *w = new_work(j, WORK_COLLECT_LOGS);
  if (!w) return finish(j, st, reason, code);
  w->final_state = st;
  w->final_reason = strdup(reason ? reason : "");
  snprintf(w->final_code, sizeof w->final_code, "%s", code ? code : "");
  queue_work(w);
}

/* How a job ends once its logs are in its S3 results store. */
typedef struct {
  job *j;
  state st;
  char *reason;
  char code[8]; /* "" for none */
} ending;

static void logs_progress(void *ud, const char *what, uint64_t done, uint64_t total, int state) {
  s3_progress(((ending *)ud)->j, what, done, total, state);
}

static void logs_stored(void *ud, const char *code, const char *message) {
  ending *e = ud;
  if (code)
    ffdl_log(FFDL_LOG_WARN, "%s: the learner logs did not reach the results store: %s", e->j->id,
             message ? message : code);
  finish(e->j, e->st, e->reason, e->code[0] ? e->code : NULL);
  free(e->reason);
  free(e);
}

/* A job that ends other than through STORING (a learner failed, a halt)
 * leaves its learner logs and whatever $RESULT_DIR holds in its S3 results
 * store too, under <training-id>/ as STORING would: the logs say why it
 * failed. Returns 1 when the upload runs (it finishes the job), 0 when the
 * job has no such store or the upload could not start. */
static int store_logs(work *w) {
  job *j = w->j;
  json_t *store = first_store(j);
  if (!j->staged || !ffdl_s3stage_results_bucket(store)) return 0; /* no learner ran: no log */
  ending *e = calloc(1, sizeof *e);
  if (e && (e->reason = strdup(w->final_reason ? w->final_reason : ""))) {
    e->j = j;
    e->st = w->final_state;
    memcpy(e->code, w->final_code, sizeof e->code);
    if (ffdl_s3stage_upload(j->o->o.loop, store, j->id, j->results_dir, logs_progress, logs_stored,
                            e) == 0)
      return 1;
  }
  ffdl_log(FFDL_LOG_WARN, "%s: cannot start uploading the learner logs to the results store",
           j->id);
  if (e) free(e->reason);
  free(e);
  return 0;
}

static void after_collect(work *w) {
  if (w->rc != 0) ffdl_log(FFDL_LOG_WARN, "%s: %s", w->j->id, w->err ? w->err : "cannot copy logs");
  if (store_logs(w)) return;
  finish(w->j, w->final_state, w->final_reason, w->final_code[0] ? w->final_code : NULL);
}

static void write_job_json(job *j) {
  json_t *doc = ffdl_jobstore_get(j->o->o.store, j->id);
  if (!doc) return;
  json_t *spec = json_object_get(doc, "spec");
  if (spec) json_object_set_new(doc, "spec", ffdl_spec_redacted(spec));
  json_object_set_new(doc, "results_dir", json_string(j->results_dir));
  json_t *final = json_object();
  const char *label;
  json_t *record;
  json_object_foreach(j->last_metrics, label, record) {
    json_t *values = json_deep_copy(json_object_get(record, "values"));
    json_t *etimes = json_object_get(record, "etimes");
    if (json_is_object(etimes)) json_object_update(values, etimes);
    json_object_set_new(final, label, values);
  }
  json_object_set_new(doc, "final_metrics", final);
  ffdl_localstore_mkdirs(j->results_dir, 0755);
  char *path = ffdl_strdup_printf("%s/job.json", j->results_dir);
  if (json_dump_file(doc, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
    ffdl_log(FFDL_LOG_ERROR, "%s: cannot write %s", j->id, path);
  free(path);
  json_decref(doc);
}

/* The job stops waiting for anything: timers, the queue, its resources. */
static void leave_scheduler(job *j) {
  uv_timer_stop(&j->retry_timer);
  uv_timer_stop(&j->emetrics_timer);
  ffdl_sched_dequeue(j->o->sched, &j->sj);
  release(j);
}

/* The observer hears that the job ended; its job.json is written. */
static void tell_end(job *j, state st) {
  ffdl_orch *o = j->o;
  if (o->o.observer && o->o.observer->on_end)
    o->o.observer->on_end(o->o.observer_ud, j->id, state_names[st]);
  schedule_cycle(o);
}

static void finish(job *j, state st, const char *reason, const char *code) {
  if (is_terminal(j->st)) return;
  leave_scheduler(j);
  transition(j, st, reason, code);
  write_job_json(j);
  tell_end(j, st);
}

static const char *queued_halt_reason(const char *reason) {
  return reason ? reason : "halted while queued";
}

static void halt_job(job *j, const char *reason) {
  if (is_terminal(j->st) || j->halting) return;
  j->halting = 1;
  ffdl_log(FFDL_LOG_INFO, "%s: halting: %s", j->id, reason ? reason : "requested");
  if (j->st == QUEUED) return end_job(j, HALTED, queued_halt_reason(reason), NULL);
  if (j->st == PROCESSING && j->running > 0) {
    ffdl_orch *o = j->o;
    unsigned grace = o->o.halt_grace_ms ? o->o.halt_grace_ms : 3000;
    for (int k = 0; k < j->learners; k++)
      if (j->slots[k].running) ffdl_backend_kill(o->o.backend, j->slots[k].handle, grace);
  }
  /* the results check or training-data download stops now; nothing is lost
   * (an upload in STORING goes on: it carries the job's results) */
  if (j->s3_staging) ffdl_s3stage_cancel(j->s3_staging);
  /* PENDING, DOWNLOADING and STORING end when their work returns */
}

int ffdl_orch_halt(ffdl_orch *o, const char *id, const char *reason) {
  job *j = find_job(o, id);
  if (!j) return FFDL_ENOENT;
  halt_job(j, reason);
  return FFDL_OK;
}

/* A queued job that never staged ends at once when halted: it has no logs
 * to collect and no work to wait for. */
static int halts_at_once(const job *j) {
  return j->st == QUEUED && !j->staged && !j->halting;
}

/* The queued jobs of halts_at_once, in list order (caller frees); NULL
 * with *N = 0 when there are none or no memory for the array. */
static job **queued_to_halt(ffdl_orch *o, size_t *n) {
  *n = 0;
  for (job *j = o->jobs; j; j = j->next)
    *n += (size_t)halts_at_once(j);
  job **batch = *n ? malloc(*n * sizeof *batch) : NULL;
  if (!batch) return *n = 0, NULL;
  size_t k = 0;
  for (job *j = o->jobs; j; j = j->next)
    if (halts_at_once(j)) batch[k++] = j;
  return batch;
}

/* Records the transitions of the N jobs of BATCH to ST, for WHY, in one
 * store transaction; 0 when it is recorded. */
static int record_many(ffdl_orch *o, job **batch, size_t n, state st, const char *why) {
  const char **ids = malloc(n * sizeof *ids);
  if (!ids) return FFDL_ENOMEM;
  for (size_t i = 0; i < n; i++)
    ids[i] = batch[i]->id;
  int rc = ffdl_jobstore_transition_many(o->o.store, ids, n, state_names[st], why, NULL, now_ms());
  free(ids);
  return rc;
}

/* J moves to ST for WHY: announced only when a batch (record_many) has
 * already RECORDED it in the store, recorded on its own otherwise. */
static void transition_after_batch(job *j, state st, const char *why, int recorded) {
  if (recorded)
    announce(j, st, why, NULL);
  else
    transition(j, st, why, NULL);
}

/*
 * Halts every queued job that never staged in one go. One by one, each
 * halt was its own store transaction and the whole stop took minutes for
 * 100,000 jobs. Here the store records every HALTED transition in one
 * transaction (when it cannot, each job records its own, as finish() does),
 * then each job ends as finish() ends it, with the same reason text. What
 * remains per job is its job.json and the observer's on_end: file system
 * work, linear in the number of jobs.
 */
static void halt_queued(ffdl_orch *o, const char *reason) {
  size_t n;
  job **batch = queued_to_halt(o, &n);
  if (!batch) return; /* none, or no memory: halt_job ends them one by one */
  const char *why = queued_halt_reason(reason);
  int recorded = record_many(o, batch, n, HALTED, why) == FFDL_OK;
  ffdl_log(recorded ? FFDL_LOG_INFO : FFDL_LOG_WARN, "halting %zu queued job(s)%s: %s", n,
           recorded ? "" : " one by one (the batch was not recorded)", why);
  for (size_t i = 0; i < n; i++) {
    job *j = batch[i];
    j->halting = 1;
    leave_scheduler(j);
    transition_after_batch(j, HALTED, why, recorded);
    write_job_json(j);
    tell_end(j, HALTED);
  }
  free(batch);
}

void ffdl_orch_halt_all(ffdl_orch *o, const char *reason) {
  halt_queued(o, reason);
  for (job *j = o->jobs; j; j = j->next)
    halt_job(j, reason);
}

/* ---- submission and lifetime ----------------------------------------- */

/* frameworks[name]["local"]: the interpreter, or a refusal. */
static int local_runtime(job *j, char **err) {
  ffdl_orch *o = j->o;
  lua_State *L = lua_of(o);
  json_t *fw = json_object_get(j->spec, "framework");
  const char *name = json_string_value(json_object_get(fw, "name"));
  ffdl_generation_push_policy(o->o.gen, "frameworks");
  int rc = 0;
  if (lua_istable(L, -1) && name && ffdl_raw_field(L, -1, name) == LUA_TTABLE) {
    if (ffdl_raw_field(L, -1, "local") == LUA_TTABLE) {
      ffdl_raw_field(L, -1, "installed");
      ffdl_raw_field(L, -2, "interpreter");
      if (lua_isboolean(L, -2) && !lua_toboolean(L, -2)) {
        const char *image = json_string_value(json_object_get(fw, "image"));
        *err = ffdl_strdup_printf("%s is not installed on this machine: it runs on the Kubernetes "
                                  "backend, with the image %s",
                                  name, image ? image : "(none)");
        rc = FFDL_EINVALID;
      } else if (lua_isstring(L, -1)) {
        const char *interp = lua_tostring(L, -1);
        j->interpreter =
            interp[0] == '/' ? strdup(interp) : ffdl_strdup_printf("%s/%s", o->root, interp);
        if (access(j->interpreter, X_OK) != 0) {
          *err =
              ffdl_strdup_printf("%s runs with %s here, which is missing: run ./scripts/example.sh "
                                 "to install it",
                                 name, j->interpreter);
          rc = FFDL_EINVALID;
        }
      }
      lua_pop(L, 2);
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return rc;
}

static void read_request(job *j) {
  json_t *res = json_object_get(j->spec, "resources");
  j->req.cpus = json_number_value(json_object_get(res, "cpus"));
  j->req.memory = (uint64_t)json_integer_value(json_object_get(res, "memory_bytes"));
  j->req.gpus = (int)json_integer_value(json_object_get(res, "gpus"));
  j->req.gpu_type = j->req.gpus > 0 ? json_string_value(json_object_get(res, "gpu_type")) : NULL;
  j->learners = (int)json_integer_value(json_object_get(j->spec, "learners"));
  if (j->learners < 1) j->learners = 1;
  if (j->learners > MAX_LEARNERS) j->learners = MAX_LEARNERS;
  j->priority = (int)json_integer_value(json_object_get(j->spec, "priority"));
  j->max_attempts =
      (int)json_integer_value(json_object_get(json_object_get(j->spec, "retry"), "max_attempts"));
  if (j->max_attempts < 1) j->max_attempts = 1;
}

static void free_job(job *j) {
  json_decref(j->spec);
  json_decref(j->last_metrics);
  ffdl_metrics_free(j->metrics);
  for (int i = 0; i < TAIL_LINES; i++)
    free(j->tail[i]);
  ffdl_sched_job_clear(&j->sj);
  free(j->slots);
  free(j->model_dir);
  free(j->interpreter);
  free(j->dir);
  free(j->results_dir);
  free(j->wait_reason);
  for (int i = 0; i < 5; i++)
    free(j->last_decision[i]);
  free(j);
}

/* A job for SPEC, with id ID (one taken over from the store) or, with ID
 * NULL, a new one. */
static job *new_job(ffdl_orch *o, const json_t *spec, const char *model_dir, const char *id) {
  job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->o = o;
  if (id)
    snprintf(j->id, sizeof j->id, "%s", id);
  else
    make_id(j->id);
  j->spec = json_deep_copy(spec);
  j->model_dir = model_dir ? strdup(model_dir) : NULL;
  j->dir = ffdl_strdup_printf("%s/jobs/%s", o->home, j->id);
  j->results_dir = ffdl_strdup_printf("%s/%s", o->results, j->id);
  j->attempt = 1;
  j->eligible = 1;
  j->last_metrics = json_object();
  j->submitted_ms = now_ms();
  read_request(j);
  j->slots = calloc((size_t)j->learners, sizeof *j->slots);
  for (int i = 0; j->slots && i < j->learners; i++) {
    j->slots[i].job = j;
    j->slots[i].index = i + 1;
  }
  j->sj = (ffdl_sched_job){.id = j->id,
                           .spec = j->spec,
                           .req = j->req,
                           .learners = j->learners,
                           .attempt = j->attempt,
                           .priority = j->priority,
                           .submitted = (double)j->submitted_ms / 1000.0,
                           .user = json_string_value(json_object_get(j->spec, "user")),
                           .team = json_string_value(json_object_get(j->spec, "team")),
                           .owner = j};
  uv_timer_init(o->o.loop, &j->retry_timer);
  uv_timer_init(o->o.loop, &j->emetrics_timer);
  j->retry_timer.data = j->emetrics_timer.data = j;
  j->timers_open = 1;
  return j;
}

int ffdl_orch_submit(ffdl_orch *o, const json_t *spec, const char *model_dir, char *id,
                     char **err) {
  *err = NULL;
  job *j = new_job(o, spec, model_dir, NULL);
  if (!j || !j->spec || !j->slots) return FFDL_ENOMEM;
  int rc = local_runtime(j, err);
  if (rc == 0)
    rc = ffdl_metrics_new(json_object_get(j->spec, "evaluation_metrics"), &j->metrics, err);
  if (rc == 0 && ffdl_jobstore_create(o->o.store, j->id, j->spec, j->submitted_ms) != 0) {
    *err = strdup("cannot write the job to the store");
    rc = FFDL_EIO;
  }
  if (rc != 0) {
    uv_close((uv_handle_t *)&j->retry_timer, NULL);
    uv_close((uv_handle_t *)&j->emetrics_timer, NULL);
    /* the timers are closed on the next loop turn; the job memory must live
     * until then: keep it on the list as an inert, never-started job */
    j->st = FAILED;
    j->next = o->jobs;
    o->jobs = j;
    j->timers_open = 0;
    return rc;
  }
  snprintf(id, 64, "%s", j->id);
  if (model_dir) {
    json_t *dir = json_string(model_dir);
    ffdl_jobstore_set_extra(o->o.store, j->id, "model_dir", dir);
    json_decref(dir);
  }
  j->next = o->jobs;
  o->jobs = j;
  if (o->o.observer && o->o.observer->on_transition)
    o->o.observer->on_transition(o->o.observer_ud, j->id, "QUEUED", "submitted", NULL);
  enqueue(j);
  return FFDL_OK;
}

int ffdl_orch_new(const ffdl_orch_opts *opts, ffdl_orch **out) {
  ffdl_orch *o = calloc(1, sizeof *o);
  if (!o) return FFDL_ENOMEM;
  o->o = *opts;
  o->home = strdup(opts->home);
  o->results = strdup(opts->results);
  o->root = strdup(opts->root ? opts->root : ".");
  if (ffdl_sched_new(opts->cluster, opts->gen, &sched_callbacks, o, &o->sched) != FFDL_OK) {
    free(o->home);
    free(o->results);
    free(o->root);
    free(o);
    return FFDL_ENOMEM;
  }
  uv_timer_init(opts->loop, &o->cycle_timer);
  o->cycle_timer.data = o;
  *out = o;
  return FFDL_OK;
}

static void free_after_close(uv_handle_t *h) {
  (void)h;
}

void ffdl_orch_free(ffdl_orch *o) {
  if (!o) return;
  /* handles close on the next loop turn; callers run the loop once more */
  uv_close((uv_handle_t *)&o->cycle_timer, free_after_close);
  for (job *j = o->jobs, *next; j; j = next) {
    next = j->next;
    if (j->timers_open) {
      uv_close((uv_handle_t *)&j->retry_timer, NULL);
      uv_close((uv_handle_t *)&j->emetrics_timer, NULL);
    }
  }
  uv_run(o->o.loop, UV_RUN_NOWAIT);
  for (job *j = o->jobs, *next; j; j = next) {
    next = j->next;
    free_job(j);
  }
  ffdl_sched_free(o->sched);
  free(o->home);
  free(o->results);
  free(o->root);
  free(o);
}

int ffdl_orch_status_final(const char *status) {
  for (state s = COMPLETED; status && s <= HALTED; s++)
    if (!strcmp(status, state_names[s])) return is_terminal(s);
  return 0;
}

size_t ffdl_orch_active(const ffdl_orch *o) {
  size_t n = 0;
  for (job *j = o->jobs; j; j = j->next)
    n += !is_terminal(j->st);
  return n;
}

const char *ffdl_orch_status(const ffdl_orch *o, const char *id) {
  job *j = find_job(o, id);
  return j ? state_names[j->st] : NULL;
}

const char *ffdl_orch_results_dir(const ffdl_orch *o, const char *id) {
  job *j = find_job(o, id);
  return j ? j->results_dir : NULL;
}

char *ffdl_orch_results_url(const ffdl_orch *o, const char *id) {
  job *j = find_job(o, id);
  return j ? s3_results_url(j) : NULL;
}

void ffdl_orch_set_observer(ffdl_orch *o, const ffdl_orch_observer *observer, void *ud) {
  o->o.observer = observer;
  o->o.observer_ud = ud;
}

/* ---- recovery after a restart --------------------------------------- */

static state state_from_name(const char *name) {
  for (int s = QUEUED; s <= HALTED; s++)
    if (name && strcmp(state_names[s], name) == 0) return (state)s;
  return FAILED;
}

/* Holds the stored placement again; 0 when every learner has its node. */
static int restore_placement(job *j, const json_t *extra) {
  json_t *nodes = json_object_get(extra, "placement");
  if (json_array_size(nodes) != (size_t)j->learners) return -1;
  int *idx = calloc((size_t)j->learners, sizeof *idx);
  if (!idx) return -1;
  int ok = 1;
  for (int i = 0; i < j->learners && ok; i++) {
    idx[i] =
        ffdl_cluster_find(j->o->o.cluster, json_string_value(json_array_get(nodes, (size_t)i)));
    ok = idx[i] >= 0;
  }
  int rc = ok ? ffdl_sched_adopt(j->o->sched, &j->sj, idx, now_s()) : -1;
  free(idx);
  if (rc != FFDL_OK) return -1;
  take_placement(j);
  return 0;
}

/* Adopts the learners of the latest attempt; one that ended while nobody
 * watched is reported with the status it left on disk. */
static void adopt_learners(job *j, const json_t *doc) {
  size_t i;
  json_t *l;
  json_array_foreach(json_object_get(doc, "learners"), i, l) {
    int n = (int)json_integer_value(json_object_get(l, "learner"));
    if ((int)json_integer_value(json_object_get(l, "attempt")) != j->attempt || n < 1 ||
        n > j->learners)
      continue;
    learner_slot *s = &j->slots[n - 1];
    int pid = (int)json_integer_value(json_object_get(l, "pid"));
    char *log = learner_log(j, n);
    char *exit_path = ffdl_strdup_printf("%s/learner-%d/exit_status", j->dir, n);
    char *err = NULL;
    if (pid > 0 && ffdl_backend_adopt(j->o->o.backend, pid, log, 0, exit_path, &learner_callbacks,
                                      s, &s->handle, &err) == 0) {
      s->running = 1;
      j->running++;
    } else {
      ffdl_log(FFDL_LOG_WARN, "%s: learner %d cannot be reattached: %s", j->id, n,
               err ? err : "no pid");
      if (!j->failure.set)
        j->failure = (failure_info){.set = 1, .kind = FFDL_EXIT_NODE_LOST, .learner = n};
    }
    free(err);
    free(log);
    free(exit_path);
  }
}

static void kill_stored_learners(const json_t *doc, int attempt) {
  size_t i;
  json_t *l;
  json_array_foreach(json_object_get(doc, "learners"), i, l) {
    int pid = (int)json_integer_value(json_object_get(l, "pid"));
    if (pid > 0 && (int)json_integer_value(json_object_get(l, "attempt")) == attempt)
      kill(-pid, SIGKILL);
  }
}

/* Takes job DOC over from the store. Returns the job when it must start
 * over, its QUEUED transition not yet recorded (requeue_recovered does
 * that for all of them at once); NULL otherwise. */
static job *recover_job(ffdl_orch *o, const json_t *doc) {
  const char *id = json_string_value(json_object_get(doc, "id"));
  json_t *extra = json_object_get(doc, "extra");
  const char *model = json_string_value(json_object_get(extra, "model_dir"));
  if (!id) return NULL; /* the store writes every job with its id */
  job *j = new_job(o, json_object_get(doc, "spec"), model, id);
  if (!j) return NULL;
  j->submitted_ms = json_integer_value(json_object_get(doc, "submitted_ms"));
  j->sj.submitted = (double)j->submitted_ms / 1000.0;
  size_t i;
  json_t *l;
  json_array_foreach(json_object_get(doc, "learners"), i, l) {
    int attempt = (int)json_integer_value(json_object_get(l, "attempt"));
    if (attempt > j->attempt) j->attempt = attempt;
  }
  char *err = NULL;
  local_runtime(j, &err);
  free(err);
  ffdl_metrics_new(json_object_get(j->spec, "evaluation_metrics"), &j->metrics, &err);
  free(err);
  j->next = o->jobs;
  o->jobs = j;
  state was = state_from_name(json_string_value(json_object_get(doc, "status")));
  if (was == PROCESSING && restore_placement(j, extra) == 0) {
    j->st = PROCESSING;
    j->staged = 1;
    ffdl_jobstore_delete_metrics(o->o.store, j->id); /* re-read from the whole log */
    adopt_learners(j, doc);
    ffdl_log(FFDL_LOG_INFO, "%s: reattached %d learner(s)", j->id, j->running);
    if (j->running == 0)
      learners_finished(j);
    else
      start_emetrics(j);
  } else if (was == STORING) {
    j->st = STORING;
    j->staged = 1;
    work *w = new_work(j, WORK_STORE);
    if (w) queue_work(w);
  } else {
    /* queued, staging, or a placement that cannot be held again: start over,
     * after making sure nothing of the old run is left (no job runs twice) */
    if (was == PROCESSING) kill_stored_learners(doc, j->attempt);
    return j;
  }
  return NULL;
}

#define REQUEUED "requeued after a server restart"

/* Queues again the N recovered jobs of BATCH. Their QUEUED transitions go
 * to the store in one transaction (or each in its own when that fails):
 * one by one, a restart with 20,000 queued jobs spent most of its time
 * committing. */
static void requeue_recovered(ffdl_orch *o, job **batch, size_t n) {
  int recorded = n && record_many(o, batch, n, QUEUED, REQUEUED) == FFDL_OK;
  for (size_t i = 0; i < n; i++) {
    transition_after_batch(batch[i], QUEUED, REQUEUED, recorded);
    enqueue(batch[i]);
  }
}

int ffdl_orch_recover(ffdl_orch *o, size_t *recovered) {
  *recovered = 0;
  json_t *list = ffdl_jobstore_list(o->o.store);
  /* the jobs to queue again; without memory for the list, each on its own */
  job **requeue = malloc((json_array_size(list) + 1) * sizeof *requeue);
  size_t i, n = 0;
  json_t *row;
  json_array_foreach(list, i, row) {
    state st = state_from_name(json_string_value(json_object_get(row, "status")));
    if (is_terminal(st)) continue;
    json_t *doc = ffdl_jobstore_get(o->o.store, json_string_value(json_object_get(row, "id")));
    if (!doc) continue;
    job *again = recover_job(o, doc);
    if (again && requeue)
      requeue[n++] = again;
    else if (again)
      requeue_recovered(o, &again, 1);
    json_decref(doc);
    (*recovered)++;
  }
  json_decref(list);
  requeue_recovered(o, requeue, n);
  free(requeue);
  schedule_cycle(o);
  return FFDL_OK;
}

void ffdl_orch_set_generation(ffdl_orch *o, ffdl_generation *gen) {
  o->o.gen = gen;
  ffdl_sched_set_generation(o->sched, gen);
  /* queued jobs get the new policies' answer now, not at the next event
   * (one the old policies failed on would otherwise wait for it) */
  if (o->sched && ffdl_sched_queued(o->sched)) schedule_cycle(o);
}

json_t *ffdl_orch_stats(const ffdl_orch *o) {
  json_t *stats = ffdl_cluster_usage(o->o.cluster);
  json_int_t queued = 0, active = 0;
  for (job *j = o->jobs; j; j = j->next) {
    queued += j->st == QUEUED;
    active += !is_terminal(j->st);
  }
  json_object_set_new(stats, "queued", json_integer(queued));
  json_object_set_new(stats, "active", json_integer(active));
  return stats;
}
