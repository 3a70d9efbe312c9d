/*
 * limits.c: the configuration of policy limits and the events of calls
 * that hit one.
 * Owns: reading {memory_mb, deadline_ms: {hook: ms}} into
 * ffdl_sandbox_limits, the counters of ffdl_policy_limit_exceeded_total and
 * the ring of recent limit events, behind one mutex (generations are
 * built and tested on the thread pool). Must not: touch a lua_State or
 * decide what a failed call means for a job (the callers do).
 */
#include "policy/limits.h"
#include "core/error.h"
#include "core/log.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_MEMORY_MB 65536.0
#define MAX_DEADLINE_MS 60000.0
#define MESSAGE_MAX 512

static const char HOOK_LIST[] = "validate, admit, order, rank, place, hold, on_failure";

/* *field = NAME.SUB (or NAME), *err = the message; returns FFDL_EINVALID. */
static int invalid(char **field, char **err, const char *name, const char *sub, const char *fmt,
                   const char *arg) {
  size_t n = strlen(name) + (sub ? strlen(sub) + 1 : 0) + 1;
  *field = malloc(n);
  if (*field) snprintf(*field, n, "%s%s%s", name, sub ? "." : "", sub ? sub : "");
  n = strlen(fmt) + (arg ? strlen(arg) : 0) + 1;
  *err = malloc(n);
  if (*err) snprintf(*err, n, fmt, arg ? arg : "");
  return FFDL_EINVALID;
}

/* The value as written, for messages (caller frees). */
static char *shown(const json_t *v) {
  char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
  return text ? text : strdup("?");
}

/* A positive number of at most MAX, into *out; else an error. */
static int positive(const json_t *v, double max, double min, double *out, char **field, char **err,
                    const char *name, const char *sub) {
  double x = json_is_number(v) ? json_number_value(v) : NAN;
  if (isfinite(x) && x > 0 && x >= min && x <= max) {
    *out = x;
    return FFDL_OK;
  }
  char *text = shown(v);
  char fmt[96];
  if (!json_is_number(v) || !(x > 0))
    snprintf(fmt, sizeof fmt, "must be a positive number, got %%s");
  else if (x < min)
    snprintf(fmt, sizeof fmt, "must be at least %g, got %%s", min);
  else
    snprintf(fmt, sizeof fmt, "must be at most %g, got %%s", max);
  int rc = invalid(field, err, name, sub, fmt, text);
  free(text);
  return rc;
}

static int read_deadlines(const json_t *map, ffdl_sandbox_limits *l, char **field, char **err,
                          const char *name) {
  if (!json_is_object(map))
    return invalid(field, err, name, "deadline_ms",
                   "must be a mapping of hook names to milliseconds (default, %s)", HOOK_LIST);
  const char *key;
  const json_t *v;
  char sub[160];
  json_object_foreach((json_t *)map, key, v) {
    snprintf(sub, sizeof sub, "deadline_ms.%s", key);
    int hook = strcmp(key, "default") == 0 ? FFDL_HOOK_COUNT : ffdl_hook_from_name(key);
    if (hook < 0)
      return invalid(field, err, name, sub, "unknown hook; the hooks are default, %s", HOOK_LIST);
    double ms;
    int rc = positive(v, MAX_DEADLINE_MS, 0, &ms, field, err, name, sub);
    if (rc != FFDL_OK) return rc;
    if (hook == FFDL_HOOK_COUNT)
      l->deadline_ms = ms;
    else
      l->hook_deadline_ms[hook] = ms;
  }
  return FFDL_OK;
}

int ffdl_policy_limits_from_json(const json_t *config, const char *name,
                                 ffdl_sandbox_limits *limits, char **field, char **err) {
  *field = NULL;
  *err = NULL;
  if (!json_is_object(config))
    return invalid(field, err, name, NULL, "must be a mapping with memory_mb and deadline_ms",
                   NULL);
  ffdl_sandbox_limits l = *limits;
  const char *key;
  const json_t *v;
  json_object_foreach((json_t *)config, key, v) {
    int rc = FFDL_OK;
    if (strcmp(key, "memory_mb") == 0) {
      double mb;
      rc = positive(v, MAX_MEMORY_MB, 1, &mb, field, err, name, key);
      if (rc == FFDL_OK) l.memory_limit = (size_t)(mb * 1048576.0);
    } else if (strcmp(key, "deadline_ms") == 0) {
      rc = read_deadlines(v, &l, field, err, name);
    } else {
      rc = invalid(field, err, name, key,
                   "unknown setting; the settings are memory_mb, deadline_ms", NULL);
    }
    if (rc != FFDL_OK) return rc;
  }
  *limits = l;
  return FFDL_OK;
}

/* ---- limit events ---- */

typedef struct {
  long long at_ms;
  char hook[48];
  char generation[65];
  ffdl_limit_kind kind;
  double limit, value;
  char message[MESSAGE_MAX];
} event;

static pthread_mutex_t events_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long exceeded[FFDL_HOOK_COUNT + 1][FFDL_LIMIT_KIND_COUNT];
static event ring[FFDL_LIMIT_EVENTS_KEPT];
static unsigned long recorded; /* events ever recorded; the next goes to ring[recorded % KEPT] */

const char *ffdl_limit_kind_name(ffdl_limit_kind kind) {
  return kind == FFDL_LIMIT_MEMORY ? "memory" : "deadline";
}

void ffdl_policy_limit_event(const char *what, const char *generation, ffdl_limit_kind kind,
                             double limit, double value, const char *message) {
  int hook = ffdl_hook_from_name(what);
  if (hook < 0) hook = FFDL_HOOK_COUNT;
  if (kind != FFDL_LIMIT_MEMORY) kind = FFDL_LIMIT_DEADLINE;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  int is_ms = kind == FFDL_LIMIT_DEADLINE;
  ffdl_log(FFDL_LOG_WARN,
           "policy limit exceeded: hook=%s generation=%.12s limit=%s max=%.0f%s value=%.*f%s: %s",
           what, generation && *generation ? generation : "-", ffdl_limit_kind_name(kind), limit,
           is_ms ? "ms" : "B", is_ms ? 1 : 0, value, is_ms ? "ms" : "B", message ? message : "");

  pthread_mutex_lock(&events_lock);
  exceeded[hook][kind]++;
  event *e = &ring[recorded++ % FFDL_LIMIT_EVENTS_KEPT];
  e->at_ms = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  snprintf(e->hook, sizeof e->hook, "%s", what ? what : "?");
  snprintf(e->generation, sizeof e->generation, "%s", generation ? generation : "");
  e->kind = kind;
  e->limit = limit;
  e->value = value;
  snprintf(e->message, sizeof e->message, "%s", message ? message : "");
  pthread_mutex_unlock(&events_lock);
}

unsigned long ffdl_policy_limit_exceeded(int hook, ffdl_limit_kind kind) {
  if (hook < 0 || hook > FFDL_HOOK_COUNT || kind < 0 || kind >= FFDL_LIMIT_KIND_COUNT) return 0;
  pthread_mutex_lock(&events_lock);
  unsigned long n = exceeded[hook][kind];
  pthread_mutex_unlock(&events_lock);
  return n;
}

json_t *ffdl_policy_limit_events(void) {
  json_t *out = json_array();
  pthread_mutex_lock(&events_lock);
  unsigned long first = recorded > FFDL_LIMIT_EVENTS_KEPT ? recorded - FFDL_LIMIT_EVENTS_KEPT : 0;
  for (unsigned long i = first; out && i < recorded; i++) {
    const event *e = &ring[i % FFDL_LIMIT_EVENTS_KEPT];
    int is_ms = e->kind == FFDL_LIMIT_DEADLINE;
    json_array_append_new(
        out, json_pack("{s:I,s:s,s:s?,s:s,s:f,s:f,s:s,s:s}", "at_ms", (json_int_t)e->at_ms, "hook",
                       e->hook, "generation", e->generation[0] ? e->generation : NULL, "limit",
                       ffdl_limit_kind_name(e->kind), "max", e->limit, "value", e->value, "unit",
                       is_ms ? "ms" : "bytes", "error", e->message));
  }
  pthread_mutex_unlock(&events_lock);
  return out;
}
