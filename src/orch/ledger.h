/*
 * GPU accounting per team and per user: what running jobs hold now, and
 * the GPU-hours used over a sliding window (for budget.lua). Time is in
 * seconds on the caller's clock, so the simulator's virtual time works the
 * same as the server's.
 */
#ifndef FFDL_ORCH_LEDGER_H
#define FFDL_ORCH_LEDGER_H

#include <stddef.h>

typedef struct ffdl_ledger ffdl_ledger;

typedef enum { FFDL_LEDGER_TEAM, FFDL_LEDGER_USER } ffdl_ledger_kind;

/* GPU-hours older than this are forgotten: the longest budget window. */
#define FFDL_LEDGER_RETENTION_S (31.0 * 24 * 3600)

int ffdl_ledger_new(ffdl_ledger **out);
void ffdl_ledger_free(ffdl_ledger *l);

/* A job of TEAM and USER (either may be NULL) holds GPUS from START. */
int ffdl_ledger_start(ffdl_ledger *l, const char *team, const char *user, int gpus, double start);
/* The job started at START with GPUS ended at END: its GPU time is booked. */
void ffdl_ledger_stop(ffdl_ledger *l, const char *team, const char *user, int gpus, double start,
                      double end);
/* GPU-hours NAME used in (NOW - WINDOW_S, NOW], running jobs included. */
double ffdl_ledger_gpu_hours(const ffdl_ledger *l, ffdl_ledger_kind kind, const char *name,
                             double window_s, double now);

/* Calls FN for every team (or user) that holds something now. */
typedef void (*ffdl_ledger_holder_fn)(void *ud, const char *name, int gpus, int jobs);
void ffdl_ledger_each_holder(const ffdl_ledger *l, ffdl_ledger_kind kind, ffdl_ledger_holder_fn fn,
                             void *ud);

#endif
