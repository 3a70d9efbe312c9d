/* Progress of long transfers for people: a bar on a terminal, periodic
 * lines otherwise. The rate is measured over the last few seconds of
 * samples, never from the start, and is not shown before a second of
 * samples backs it. */
#ifndef FFDL_CORE_PROGRESS_H
#define FFDL_CORE_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

/* What a report says of the transfer. RUNNING and DONE are 0 and 1, so that
 * a source that knows only "final" (0 or 1) speaks this too. */
enum {
  FFDL_PROGRESS_RUNNING = 0,
  FFDL_PROGRESS_DONE = 1,
  FFDL_PROGRESS_FAILED = 2,
  FFDL_PROGRESS_RETRYING = 3, /* running, and a failed request is being tried again */
};

#define FFDL_PROGRESS_SAMPLES 24

typedef struct {
  const char *label; /* borrowed */
  FILE *out;         /* stderr unless a test sets another */
  int tty;           /* draw a bar on one line (else a line every few seconds) */
  int done;          /* finished: later reports are ignored */
  int drawn;         /* something was drawn */
  int was_retrying;  /* the last drawing said "retrying" */
  uint64_t high;     /* the most bytes reported: a retry sends some again */
  double first_t;    /* the first report, and its bytes: the final average */
  uint64_t first_b;
  uint64_t last_b; /* the last report's bytes */
  double moved_t;  /* when the bytes last went up */
  /* the rate's samples, a ring, oldest at HEAD */
  double t[FFDL_PROGRESS_SAMPLES];
  uint64_t b[FFDL_PROGRESS_SAMPLES];
  int head, n;
  double last_draw;
  char last_text[200];
} ffdl_progress;

/* LABEL is borrowed and must outlive P. */
void ffdl_progress_init(ffdl_progress *p, const char *label);
/* DONE of TOTAL bytes so far (TOTAL 0 while unknown). Fewer bytes than
 * before mean that a retry sends some again: the line says so. */
void ffdl_progress_update(ffdl_progress *p, uint64_t done, uint64_t total);
/* Ends the bar (a newline on a terminal, a last line otherwise) with "(done)". */
void ffdl_progress_finish(ffdl_progress *p, uint64_t done, uint64_t total);
/* Ends the bar as ffdl_progress_finish does, saying "(failed)". */
void ffdl_progress_fail(ffdl_progress *p, uint64_t done, uint64_t total);
/* Any of the above by STATE (FFDL_PROGRESS_*), at NOW (seconds on
 * CLOCK_MONOTONIC; tests pass their own). */
void ffdl_progress_report(ffdl_progress *p, uint64_t done, uint64_t total, int state);
void ffdl_progress_report_at(ffdl_progress *p, uint64_t done, uint64_t total, int state,
                             double now);
/* For those who draw their own line (s3tool): samples DONE of TOTAL and
 * gives the recent rate (bytes/s) and the ETA (s), each < 0 while unknown
 * (the ETA also after 2 s without a byte). */
void ffdl_progress_estimate(ffdl_progress *p, uint64_t done, uint64_t total, double *rate,
                            double *eta);
void ffdl_progress_estimate_at(ffdl_progress *p, uint64_t done, uint64_t total, double now,
                               double *rate, double *eta);

#endif
