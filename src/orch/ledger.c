/*
 * ledger.c: GPU holdings and GPU-hours per team and user.
 * Owns: the running totals and an hourly ring of booked GPU-seconds per
 * name, so that a windowed sum costs at most one pass over the ring.
 * Must not: decide anything (budget.lua does).
 */
#include "orch/ledger.h"
#include "core/error.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HOURS (31 * 24 + 1) /* FFDL_LEDGER_RETENTION_S in hours, plus the current one */

/* The running jobs that started at one instant: an account keeps them
 * sorted by start, so that a job's stop finds its entry by binary search
 * (a scan of every running job cost more than the rest of a placement on
 * a 5,000-node cluster). An entry with no jobs left is removed later. */
typedef struct {
  double start;
  long gpus;
  int jobs;
} holding;

typedef struct {
  char *name; /* NULL: free slot */
  ffdl_ledger_kind kind;
  int gpus, jobs;
  holding *running; /* sorted by start */
  size_t nrunning, caprunning, nemptied;
  double gpu_s[HOURS]; /* GPU-seconds booked in hour hour_of[i] */
  int64_t hour_of[HOURS];
} account;

struct ffdl_ledger {
  account *slots;
  size_t cap, used;
};

static uint64_t hash_name(ffdl_ledger_kind kind, const char *name) {
  uint64_t h = 1469598103934665603ULL ^ (uint64_t)kind;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    h = (h ^ *p) * 1099511628211ULL;
  return h;
}

int ffdl_ledger_new(ffdl_ledger **out) {
  ffdl_ledger *l = calloc(1, sizeof *l);
  if (!l) return FFDL_ENOMEM;
  l->cap = 16;
  l->slots = calloc(l->cap, sizeof *l->slots);
  if (!l->slots) {
    free(l);
    return FFDL_ENOMEM;
  }
  *out = l;
  return FFDL_OK;
}

void ffdl_ledger_free(ffdl_ledger *l) {
  if (!l) return;
  for (size_t i = 0; i < l->cap; i++) {
    free(l->slots[i].name);
    free(l->slots[i].running);
  }
  free(l->slots);
  free(l);
}

static account *lookup(const ffdl_ledger *l, ffdl_ledger_kind kind, const char *name) {
  for (size_t i = hash_name(kind, name) % l->cap;; i = (i + 1) % l->cap) {
    account *a = &l->slots[i];
    if (!a->name || (a->kind == kind && strcmp(a->name, name) == 0)) return a;
  }
}

static int grow(ffdl_ledger *l) {
  ffdl_ledger bigger = {.cap = l->cap * 2};
  bigger.slots = calloc(bigger.cap, sizeof *bigger.slots);
  if (!bigger.slots) return FFDL_ENOMEM;
  for (size_t i = 0; i < l->cap; i++)
    if (l->slots[i].name) *lookup(&bigger, l->slots[i].kind, l->slots[i].name) = l->slots[i];
  free(l->slots);
  l->slots = bigger.slots;
  l->cap = bigger.cap;
  return FFDL_OK;
}

/* The account of NAME, created on first use; NULL without a name. */
static account *account_of(ffdl_ledger *l, ffdl_ledger_kind kind, const char *name) {
  if (!name) return NULL;
  account *a = lookup(l, kind, name);
  if (a->name) return a;
  if ((l->used + 1) * 2 > l->cap) {
    if (grow(l) != FFDL_OK) return NULL;
    a = lookup(l, kind, name);
  }
  memset(a, 0, sizeof *a);
  a->name = strdup(name);
  if (!a->name) return NULL;
  a->kind = kind;
  for (size_t h = 0; h < HOURS; h++)
    a->hour_of[h] = -1;
  l->used++;
  return a;
}

/* The first entry of A starting at or after START. */
static size_t first_at(const account *a, double start) {
  size_t lo = 0, hi = a->nrunning;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (a->running[mid].start < start)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static int hold(account *a, int gpus, double start) {
  if (!a) return FFDL_OK;
  /* jobs start in time order, so this is nearly always the last entry */
  size_t k =
      a->nrunning && a->running[a->nrunning - 1].start < start ? a->nrunning : first_at(a, start);
  if (k == a->nrunning || a->running[k].start != start) {
    if (a->nrunning == a->caprunning) {
      size_t cap = a->caprunning ? a->caprunning * 2 : 4;
      holding *grown = realloc(a->running, cap * sizeof *grown);
      if (!grown) return FFDL_ENOMEM;
      a->running = grown;
      a->caprunning = cap;
    }
    memmove(&a->running[k + 1], &a->running[k], (a->nrunning - k) * sizeof *a->running);
    a->running[k] = (holding){start, 0, 0};
    a->nrunning++;
  } else if (a->running[k].jobs == 0) {
    a->nemptied--;
  }
  a->running[k].gpus += gpus;
  a->running[k].jobs++;
  a->gpus += gpus;
  a->jobs++;
  return FFDL_OK;
}

/* Drops the entries no running job is left in, once they are half. */
static void drop_emptied(account *a) {
  if (a->nemptied * 2 < a->nrunning) return;
  size_t m = 0;
  for (size_t k = 0; k < a->nrunning; k++)
    if (a->running[k].jobs > 0) a->running[m++] = a->running[k];
  a->nrunning = m;
  a->nemptied = 0;
}

int ffdl_ledger_start(ffdl_ledger *l, const char *team, const char *user, int gpus, double start) {
  int rc = hold(account_of(l, FFDL_LEDGER_TEAM, team), gpus, start);
  if (rc == FFDL_OK) rc = hold(account_of(l, FFDL_LEDGER_USER, user), gpus, start);
  return rc;
}

/* Adds GPU-seconds of [from, to) to the hourly ring. */
static void book(account *a, int gpus, double from, double to) {
  if (gpus <= 0 || to <= from) return;
  if (to - from > FFDL_LEDGER_RETENTION_S) from = to - FFDL_LEDGER_RETENTION_S;
  for (double t = from; t < to;) {
    int64_t hour = (int64_t)floor(t / 3600);
    double end = fmin(to, (double)(hour + 1) * 3600);
    size_t i = (size_t)(hour % HOURS);
    if (a->hour_of[i] != hour) a->hour_of[i] = hour, a->gpu_s[i] = 0;
    a->gpu_s[i] += gpus * (end - t);
    t = end;
  }
}

static void unhold(account *a, int gpus, double start, double end) {
  if (!a) return;
  size_t k = first_at(a, start);
  if (k == a->nrunning || a->running[k].start != start || a->running[k].jobs == 0) return;
  a->running[k].gpus -= gpus;
  if (--a->running[k].jobs == 0) a->nemptied++;
  a->gpus -= gpus;
  a->jobs--;
  book(a, gpus, start, end);
  drop_emptied(a);
}

void ffdl_ledger_stop(ffdl_ledger *l, const char *team, const char *user, int gpus, double start,
                      double end) {
  if (team) unhold(lookup(l, FFDL_LEDGER_TEAM, team), gpus, start, end);
  if (user) unhold(lookup(l, FFDL_LEDGER_USER, user), gpus, start, end);
}

double ffdl_ledger_gpu_hours(const ffdl_ledger *l, ffdl_ledger_kind kind, const char *name,
                             double window_s, double now) {
  if (!name) return 0;
  const account *a = lookup(l, kind, name);
  if (!a->name) return 0;
  if (window_s > FFDL_LEDGER_RETENTION_S) window_s = FFDL_LEDGER_RETENTION_S;
  double from = now - window_s, gpu_s = 0;
  int64_t first = (int64_t)floor(from / 3600), last = (int64_t)floor(now / 3600);
  for (size_t i = 0; i < HOURS; i++) {
    int64_t hour = a->hour_of[i];
    if (hour < first || hour > last) continue;
    /* the oldest hour counts for the part of it inside the window */
    double share = hour == first ? ((double)(hour + 1) * 3600 - from) / 3600 : 1;
    gpu_s += a->gpu_s[i] * fmin(1, fmax(0, share));
  }
  for (size_t k = 0; k < a->nrunning; k++)
    gpu_s += (double)a->running[k].gpus * fmax(0, now - fmax(a->running[k].start, from));
  return gpu_s / 3600;
}

void ffdl_ledger_each_holder(const ffdl_ledger *l, ffdl_ledger_kind kind, ffdl_ledger_holder_fn fn,
                             void *ud) {
  for (size_t i = 0; i < l->cap; i++) {
    const account *a = &l->slots[i];
    if (a->name && a->kind == kind && a->jobs > 0) fn(ud, a->name, a->gpus, a->jobs);
  }
}
