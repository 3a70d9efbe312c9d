/* Progress of long transfers for people: a bar on a terminal, periodic
 * lines otherwise. */
#ifndef FFDL_CORE_PROGRESS_H
#define FFDL_CORE_PROGRESS_H

#include <stdint.h>

typedef struct {
  const char *label;
  double last_line; /* when the last line was printed (non-terminals) */
  double started;
  int tty;
  int done;
} ffdl_progress;

void ffdl_progress_init(ffdl_progress *p, const char *label);
/* TOTAL may be 0 while unknown. */
void ffdl_progress_update(ffdl_progress *p, uint64_t done, uint64_t total);
/* Ends the bar (a newline on a terminal, a last line otherwise). */
void ffdl_progress_finish(ffdl_progress *p, uint64_t done, uint64_t total);

#endif
