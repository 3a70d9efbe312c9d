/* What ffdl-run shows on stderr while jobs run. */
#ifndef FFDL_APP_UI_H
#define FFDL_APP_UI_H

#include "core/progress.h"
#include "orch/orch.h"

typedef struct {
  int show_lines; /* learner output, prefixed by learner number */
  int prefix_ids; /* several jobs at once: name the job on every line */
  int quiet;
  /* the transfers in progress (several jobs may stage at once), each with
   * its own rate; a slot is free when its label is "" */
  struct {
    ffdl_progress bar;
    char label[160];
  } bars[4];
  unsigned next_bar; /* the slot to take when none is free */
} ffdl_ui;

/* Observer callbacks that print for UI (pass the ffdl_ui as observer_ud). */
extern const ffdl_orch_observer ffdl_ui_observer;

void ffdl_ui_transition(ffdl_ui *ui, const char *id, const char *status, const char *reason,
                        const char *code);
void ffdl_ui_waiting(ffdl_ui *ui, const char *id, const char *reason);
void ffdl_ui_line(ffdl_ui *ui, const char *id, int learner, const char *line, size_t len);
void ffdl_ui_metric(ffdl_ui *ui, const char *id, const json_t *record);
/* STATE is FFDL_PROGRESS_* (core/progress.h): 0 while running, 1 when done,
 * 2 when failed, 3 while a failed request is tried again. */
void ffdl_ui_progress(ffdl_ui *ui, const char *id, const char *what, uint64_t done, uint64_t total,
                      int state);

#endif
