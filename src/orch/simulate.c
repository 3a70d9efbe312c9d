/*
 * simulate.c: `ffdl policy simulate`'s engine.
 * Owns: reading the workload trace, virtual time (arrivals and job ends as
 * events), and the figures of a run. Must not: schedule by itself; every
 * decision goes through sched.c and the policy hooks, as in the server.
 */
#define _GNU_SOURCE /* asprintf */
#include "orch/simulate.h"
#include "core/error.h"
#include "core/str.h"
#include "orch/cluster.h"
#include "orch/sched.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* With nothing running and nothing arriving, time still moves in steps of
 * IDLE_STEP_S (a GPU-hour budget may open up), for at most the ledger's
 * retention; what still waits then is reported as unscheduled. */
#define IDLE_STEP_S 300.0

typedef enum { SIM_WAITING, SIM_RUNNING, SIM_DONE, SIM_NEVER_FITS } sim_status;

typedef struct {
  ffdl_sched_job sj;
  char id[32];
  char *name, *user, *team, *gpu_type, *reason;
  json_t *spec;
  int row; /* line in the trace */
  double submit, duration, start, end;
  long order; /* start sequence number, -1 before it starts */
  sim_status status;
} sim_job;

/* A heap entry: the end time is kept next to the job, so that sifting
 * reads one array instead of chasing a pointer per comparison. */
typedef struct {
  double end;
  sim_job *job;
} running_job;

typedef struct {
  sim_job *jobs;
  size_t n;
  running_job *running; /* min-heap on end time */
  size_t nrunning;
  double now;
  long started;
} sim;

/* ---- the trace ----------------------------------------------------------- */

enum {
  COL_SUBMIT,
  COL_NAME,
  COL_USER,
  COL_TEAM,
  COL_LEARNERS,
  COL_GPUS,
  COL_CPUS,
  COL_MEMORY,
  COL_GPU_TYPE,
  COL_DURATION,
  COL_PRIORITY,
  COLUMNS
};
static const char *const column_names[COLUMNS] = {"submit_s", "name",       "user",    "team",
                                                  "learners", "gpus",       "cpus",    "memory",
                                                  "gpu_type", "duration_s", "priority"};

#define MAX_FIELDS 64

/* Splits LINE in place at commas; "quoted, fields" keep their commas. */
static int split_csv(char *line, char **fields, int *starts) {
  int n = 0;
  char *p = line;
  while (n < MAX_FIELDS) {
    starts[n] = (int)(p - line) + 1;
    if (*p == '"') {
      char *out = ++p;
      fields[n++] = out;
      while (*p && !(*p == '"' && p[1] != '"'))
        *out++ = *p == '"' ? (p++, *p++) : *p++;
      if (*p == '"') p++;
      char *rest = p;
      *out = '\0';
      p = rest;
      if (*p == ',')
        p++;
      else if (*p)
        return -1;
      else
        break;
      continue;
    }
    fields[n++] = p;
    char *comma = strchr(p, ',');
    if (!comma) break;
    *comma = '\0';
    p = comma + 1;
  }
  return n;
}

static char *trace_error(const char *path, int line, int col, const char *field, const char *msg) {
  char *out = NULL;
  if (asprintf(&out, "%s:%d:%d: %s: %s", path, line, col, field, msg) < 0) out = NULL;
  return out;
}

static int parse_number(const char *text, double *out, double min) {
  return ffdl_parse_number(text, min, INFINITY, 0, out);
}

static int parse_int(const char *text, long *out, long min, long max) {
  double v;
  if (ffdl_parse_number(text, (double)min, (double)max, 1, &v) != 0) return -1;
  *out = (long)v;
  return 0;
}

static char *nonempty_dup(const char *text) {
  return text && *text ? strdup(text) : NULL;
}

/* Fills J from one row; *err names the column on failure. */
static int read_row(sim_job *j, char **f, const int *starts, const int *col, const char *path,
                    int line, char **err) {
  double num;
  long whole;
#define BAD(c, msg)                                                                                \
  (*err = trace_error(path, line, starts[col[c]], column_names[c], msg), FFDL_EINVALID)
  if (parse_number(f[col[COL_SUBMIT]], &num, 0) != 0)
    return BAD(COL_SUBMIT, "must be a number of seconds >= 0");
  j->submit = num;
  if (!*f[col[COL_NAME]]) return BAD(COL_NAME, "must not be empty");
  if (parse_int(f[col[COL_LEARNERS]], &whole, 1, 1024) != 0)
    return BAD(COL_LEARNERS, "must be a whole number 1..1024");
  j->sj.learners = (int)whole;
  if (parse_int(f[col[COL_GPUS]], &whole, 0, FFDL_MAX_NODE_GPUS) != 0)
    return BAD(COL_GPUS, "must be a whole number 0..64");
  j->sj.req.gpus = (int)whole;
  if (parse_number(f[col[COL_CPUS]], &num, 0) != 0) return BAD(COL_CPUS, "must be a number >= 0");
  j->sj.req.cpus = num;
  if (ffdl_cluster_parse_bytes(f[col[COL_MEMORY]], &j->sj.req.memory) != 0)
    return BAD(COL_MEMORY, "must be a size such as 16GiB or a byte count");
  if (parse_number(f[col[COL_DURATION]], &num, 0) != 0)
    return BAD(COL_DURATION, "must be a number of seconds >= 0");
  j->duration = num;
  const char *prio = f[col[COL_PRIORITY]];
  if (*prio && parse_int(prio, &whole, -1000000, 1000000) != 0)
    return BAD(COL_PRIORITY, "must be a whole number");
  j->sj.priority = *prio ? (int)whole : 0;
#undef BAD
  j->name = strdup(f[col[COL_NAME]]);
  j->user = nonempty_dup(f[col[COL_USER]]);
  j->team = nonempty_dup(f[col[COL_TEAM]]);
  j->gpu_type = j->sj.req.gpus > 0 ? nonempty_dup(f[col[COL_GPU_TYPE]]) : NULL;
  return j->name ? FFDL_OK : FFDL_ENOMEM;
}

/* Maps each required column to its position in the header. */
static int read_header(char *line, const char *path, int *col, char **err) {
  char *fields[MAX_FIELDS];
  int starts[MAX_FIELDS];
  int n = split_csv(line, fields, starts);
  for (int c = 0; c < COLUMNS; c++) {
    col[c] = -1;
    for (int k = 0; k < n; k++)
      if (strcmp(fields[k], column_names[c]) == 0) col[c] = k;
    if (col[c] < 0) {
      *err = trace_error(path, 1, 1, column_names[c], "this column is missing from the header");
      return FFDL_EINVALID;
    }
  }
  return n;
}

static void chomp(char *line) {
  size_t len = strlen(line);
  while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
    line[--len] = '\0';
}

static int add_job(sim *sm, size_t *cap) {
  if (sm->n < *cap) return FFDL_OK;
  size_t grown_cap = *cap ? *cap * 2 : 1024;
  sim_job *grown = realloc(sm->jobs, grown_cap * sizeof *grown);
  if (!grown) return FFDL_ENOMEM;
  sm->jobs = grown;
  *cap = grown_cap;
  return FFDL_OK;
}

static int load_trace(sim *sm, const char *path, char **err) {
  FILE *in = fopen(path, "r");
  if (!in) {
    *err = trace_error(path, 1, 1, "(file)", strerror(errno));
    return FFDL_ENOENT;
  }
  char *line = NULL;
  size_t linecap = 0, cap = 0;
  int col[COLUMNS], lineno = 0, width = -1, rc = FFDL_OK;
  while (rc == FFDL_OK && getline(&line, &linecap, in) >= 0) {
    lineno++;
    chomp(line);
    if (width < 0) {
      /* a spreadsheet's UTF-8 export starts with a byte order mark */
      char *header = strncmp(line, "\xEF\xBB\xBF", 3) == 0 ? line + 3 : line;
      rc = (width = read_header(header, path, col, err)) < 0 ? FFDL_EINVALID : FFDL_OK;
      continue;
    }
    if (!*line) continue;
    char *fields[MAX_FIELDS];
    int starts[MAX_FIELDS];
    int n = split_csv(line, fields, starts);
    if (n != width) {
      char msg[96];
      snprintf(msg, sizeof msg, "has %d fields, the header has %d", n, width);
      *err = trace_error(path, lineno, 1, "(row)", msg);
      rc = FFDL_EINVALID;
      break;
    }
    if ((rc = add_job(sm, &cap)) != FFDL_OK) break;
    sim_job *j = &sm->jobs[sm->n];
    memset(j, 0, sizeof *j);
    j->row = lineno;
    if ((rc = read_row(j, fields, starts, col, path, lineno, err)) != FFDL_OK) {
      free(j->name), free(j->user), free(j->team), free(j->gpu_type);
      break;
    }
    sm->n++;
  }
  if (rc == FFDL_OK && width < 0) {
    *err = trace_error(path, 1, 1, "(file)", "the trace is empty: a header line is required");
    rc = FFDL_EINVALID;
  }
  free(line);
  fclose(in);
  return rc;
}

/* ---- events -------------------------------------------------------------- */

static void heap_swap(sim *sm, size_t a, size_t b) {
  running_job t = sm->running[a];
  sm->running[a] = sm->running[b];
  sm->running[b] = t;
}

static void heap_push(sim *sm, sim_job *j) {
  size_t i = sm->nrunning++;
  sm->running[i] = (running_job){j->end, j};
  while (i > 0 && sm->running[(i - 1) / 2].end > sm->running[i].end) {
    heap_swap(sm, i, (i - 1) / 2);
    i = (i - 1) / 2;
  }
}

static sim_job *heap_pop(sim *sm) {
  sim_job *top = sm->running[0].job;
  sm->running[0] = sm->running[--sm->nrunning];
  for (size_t i = 0;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < sm->nrunning && sm->running[l].end < sm->running[m].end) m = l;
    if (r < sm->nrunning && sm->running[r].end < sm->running[m].end) m = r;
    if (m == i) break;
    heap_swap(sm, i, m);
    i = m;
  }
  return top;
}

static void on_placed(void *ud, ffdl_sched_job *sj, const char *how) {
  (void)how;
  sim *sm = ud;
  sim_job *j = sj->owner;
  j->status = SIM_RUNNING;
  j->start = sm->now;
  j->end = sm->now + j->duration;
  j->order = sm->started++;
  heap_push(sm, j);
}

static void remember_reason(sim_job *j, const char *reason) {
  if (j->reason && strcmp(j->reason, reason) == 0) return;
  free(j->reason);
  j->reason = strdup(reason);
}

static void on_waiting(void *ud, ffdl_sched_job *sj, const char *reason) {
  (void)ud;
  remember_reason(sj->owner, reason);
}

static void on_never_fits(void *ud, ffdl_sched_job *sj, const char *why) {
  (void)ud;
  sim_job *j = sj->owner;
  j->status = SIM_NEVER_FITS;
  remember_reason(j, why);
}

static int by_submit(const void *a, const void *b) {
  const sim_job *x = *(sim_job *const *)a, *y = *(sim_job *const *)b;
  if (x->submit != y->submit) return x->submit < y->submit ? -1 : 1;
  return x->row - y->row;
}

static void prepare_job(sim_job *j, size_t index) {
  snprintf(j->id, sizeof j->id, "sim-%zu", index + 1);
  j->spec = json_pack("{s:s}", "name", j->name);
  j->order = -1;
  j->sj = (ffdl_sched_job){.id = j->id,
                           .spec = j->spec,
                           .req = j->sj.req,
                           .learners = j->sj.learners,
                           .attempt = 1,
                           .priority = j->sj.priority,
                           .submitted = j->submit,
                           .user = j->user,
                           .team = j->team,
                           .owner = j};
  j->sj.req.gpu_type = j->gpu_type;
}

static double clock_s(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* How long the replay took: wall time, and the CPU time this thread
 * spent on it (what a busy machine's other load does not inflate much). */
typedef struct {
  double wall_s, cpu_s;
} replay_time;

/* The event loop: arrivals and ends move virtual time; a cycle follows
 * every instant at which something happened. */
static int replay(sim *sm, ffdl_sched *sched, ffdl_cluster *cl) {
  sim_job **arrivals = malloc((sm->n ? sm->n : 1) * sizeof *arrivals);
  sm->running = malloc((sm->n ? sm->n : 1) * sizeof *sm->running);
  if (!arrivals || !sm->running) {
    free(arrivals);
    return FFDL_ENOMEM;
  }
  for (size_t i = 0; i < sm->n; i++)
    arrivals[i] = &sm->jobs[i];
  qsort(arrivals, sm->n, sizeof *arrivals, by_submit);
  size_t next = 0;
  double idle = 0;
  sm->now = sm->n ? arrivals[0]->submit : 0;
  for (;;) {
    double t = INFINITY;
    if (next < sm->n) t = arrivals[next]->submit;
    if (sm->nrunning && sm->running[0].end < t) t = sm->running[0].end;
    if (isinf(t)) {
      /* nothing runs or arrives: only time can open a budget */
      if (!ffdl_sched_queued(sched) || idle >= FFDL_LEDGER_RETENTION_S) break;
      idle += IDLE_STEP_S;
      t = sm->now + IDLE_STEP_S;
    } else {
      idle = 0;
    }
    sm->now = t;
    while (sm->nrunning && sm->running[0].end <= t) {
      sim_job *j = heap_pop(sm);
      ffdl_sched_release(sched, &j->sj, j->end);
      j->status = SIM_DONE;
    }
    while (next < sm->n && arrivals[next]->submit <= t)
      if (ffdl_sched_enqueue(sched, &arrivals[next++]->sj, t) != FFDL_OK) {
        free(arrivals);
        return FFDL_ENOMEM;
      }
    ffdl_sched_cycle(sched, t);
  }
  (void)cl;
  free(arrivals);
  return FFDL_OK;
}

/* ---- figures ------------------------------------------------------------- */

static int by_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static const char *status_name(sim_status st) {
  static const char *const names[] = {"unscheduled", "running", "completed", "never_fits"};
  return names[st];
}

static json_t *per_job(const sim *sm, const ffdl_cluster *cl) {
  json_t *out = json_array();
  for (size_t i = 0; i < sm->n; i++) {
    const sim_job *j = &sm->jobs[i];
    json_t *o = json_pack("{s:i,s:s,s:s?,s:s,s:f}", "row", j->row, "name", j->name, "team", j->team,
                          "status", status_name(j->status), "submit_s", j->submit);
    if (j->order >= 0) {
      json_t *nodes = json_array();
      for (int k = 0; k < j->sj.learners; k++)
        json_array_append_new(nodes, json_string(ffdl_cluster_node_name(cl, j->sj.nodes[k])));
      json_object_set_new(o, "start_s", json_real(j->start));
      json_object_set_new(o, "end_s", json_real(j->end));
      json_object_set_new(o, "order", json_integer(j->order));
      json_object_set_new(o, "nodes", nodes);
    }
    if (j->status != SIM_DONE && j->reason)
      json_object_set_new(o, "reason", json_string(j->reason));
    json_array_append_new(out, o);
  }
  return out;
}

/* Each team's part of the GPU-seconds used (CPU-seconds when no job used a GPU). */
static json_t *share_by_team(const sim *sm, double gpu_s, double cpu_s) {
  json_t *share = json_object();
  int by_gpu = gpu_s > 0;
  double total = by_gpu ? gpu_s : cpu_s;
  for (size_t i = 0; i < sm->n && total > 0; i++) {
    const sim_job *j = &sm->jobs[i];
    if (j->status != SIM_DONE) continue;
    double used = (by_gpu ? j->sj.req.gpus : j->sj.req.cpus) * j->sj.learners * j->duration;
    const char *team = j->team ? j->team : "(none)";
    json_t *prev = json_object_get(share, team);
    json_object_set_new(share, team, json_real((prev ? json_real_value(prev) : 0) + used / total));
  }
  return share;
}

static json_t *figures(const sim *sm, ffdl_sched *sched, const ffdl_cluster *cl, replay_time took) {
  double wall = took.wall_s;
  size_t completed = 0, never = 0, unscheduled = 0, started = 0;
  double first = INFINITY, last = 0, queue_sum = 0, jct_sum = 0, gpu_s = 0, cpu_s = 0;
  double *waits = malloc((sm->n ? sm->n : 1) * sizeof *waits);
  if (!waits) return NULL;
  for (size_t i = 0; i < sm->n; i++) {
    const sim_job *j = &sm->jobs[i];
    never += j->status == SIM_NEVER_FITS;
    unscheduled += j->status == SIM_WAITING;
    if (j->submit < first) first = j->submit;
    if (j->order < 0) continue;
    waits[started++] = j->start - j->submit;
    queue_sum += j->start - j->submit;
    if (j->status != SIM_DONE) continue;
    completed++;
    jct_sum += j->end - j->submit;
    if (j->end > last) last = j->end;
    gpu_s += (double)j->sj.req.gpus * j->sj.learners * j->duration;
    cpu_s += j->sj.req.cpus * j->sj.learners * j->duration;
  }
  qsort(waits, started, sizeof *waits, by_double);
  double p95 = started ? waits[(size_t)ceil(0.95 * (double)started) - 1] : 0;
  free(waits);
  json_t *usage = ffdl_cluster_usage(cl);
  double gpus = (double)json_integer_value(json_object_get(usage, "gpus_total"));
  double cpus = json_number_value(json_object_get(usage, "cpus_total"));
  json_decref(usage);
  double makespan = completed ? last - first : 0;
  const ffdl_sched_stats *st = ffdl_sched_get_stats(sched);
  return json_pack(
      "{s:I,s:I,s:I,s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:o,s:I,s:f,s:I,s:I,s:I,s:f,s:f,s:f}", "jobs",
      (json_int_t)sm->n, "completed", (json_int_t)completed, "never_fit", (json_int_t)never,
      "unscheduled", (json_int_t)unscheduled, "makespan_s", makespan, "mean_queue_s",
      started ? queue_sum / (double)started : 0.0, "p95_queue_s", p95, "mean_jct_s",
      completed ? jct_sum / (double)completed : 0.0, "gpu_utilization",
      gpus > 0 && makespan > 0 ? gpu_s / (gpus * makespan) : 0.0, "cpu_utilization",
      cpus > 0 && makespan > 0 ? cpu_s / (cpus * makespan) : 0.0, "share_by_team",
      share_by_team(sm, gpu_s, cpu_s), "placements", (json_int_t)st->placements, "placements_per_s",
      wall > 0 ? (double)st->placements / wall : 0.0, "cycles", (json_int_t)st->cycles,
      "place_calls", (json_int_t)st->place_calls, "admit_calls", (json_int_t)st->admit_calls,
      "wall_s", wall, "cpu_s", took.cpu_s, "placements_per_cpu_s",
      took.cpu_s > 0 ? (double)st->placements / took.cpu_s : 0.0);
}

static void free_sim(sim *sm) {
  for (size_t i = 0; i < sm->n; i++) {
    sim_job *j = &sm->jobs[i];
    free(j->name), free(j->user), free(j->team), free(j->gpu_type), free(j->reason);
    json_decref(j->spec);
    ffdl_sched_job_clear(&j->sj);
  }
  free(sm->jobs);
  free(sm->running);
}

int ffdl_simulate(const char *cluster_yaml, const char *trace_csv, ffdl_generation *gen,
                  json_t **result, char **err) {
  *result = NULL;
  *err = NULL;
  sim sm = {0};
  ffdl_cluster *cl = NULL;
  ffdl_sched *sched = NULL;
  static const ffdl_sched_callbacks callbacks = {NULL, on_waiting, on_placed, on_never_fits};
  int rc = ffdl_cluster_new(&cl);
  if (rc == FFDL_OK) rc = ffdl_cluster_load_yaml(cl, cluster_yaml, err);
  if (rc == FFDL_OK) rc = load_trace(&sm, trace_csv, err);
  if (rc == FFDL_OK) rc = ffdl_sched_new(cl, gen, &callbacks, &sm, &sched);
  for (size_t i = 0; rc == FFDL_OK && i < sm.n; i++)
    prepare_job(&sm.jobs[i], i);
  if (rc == FFDL_OK) {
    replay_time took = {-clock_s(CLOCK_MONOTONIC), -clock_s(CLOCK_THREAD_CPUTIME_ID)};
    rc = replay(&sm, sched, cl);
    took.wall_s += clock_s(CLOCK_MONOTONIC);
    took.cpu_s += clock_s(CLOCK_THREAD_CPUTIME_ID);
    if (rc == FFDL_OK) *result = figures(&sm, sched, cl, took);
    if (*result) json_object_set_new(*result, "per_job", per_job(&sm, cl));
    if (*result) json_object_set_new(*result, "generation", json_string(ffdl_generation_hash(gen)));
    if (rc == FFDL_OK && !*result) rc = FFDL_ENOMEM;
  }
  if (rc != FFDL_OK && !*err) *err = strdup(ffdl_strerror(rc));
  ffdl_sched_free(sched);
  free_sim(&sm);
  ffdl_cluster_free(cl);
  return rc;
}
