/* What ffdl-run shows on stderr while jobs run. */
#ifndef FFDL_APP_UI_H
#define FFDL_APP_UI_H

#include "core/progress.h"
#include "orch/orch.h"

typedef struct {
  int show_lines; /* learner output, prefixed by learner number */
  int prefix_ids; /* several jobs at once: name the job on every line */
  int quiet;
  ffdl_progress bar; /* the transfer in progress, if any */
  char bar_label[160];
  int bar_active;
} ffdl_ui;

/* Observer callbacks that print for UI (pass the ffdl_ui as observer_ud). */
extern const ffdl_orch_observer ffdl_ui_observer;

void ffdl_ui_transition(ffdl_ui *ui, const char *id, const char *status, const char *reason,
                        const char *code);
void ffdl_ui_waiting(ffdl_ui *ui, const char *id, const char *reason);
void ffdl_ui_line(ffdl_ui *ui, const char *id, int learner, const char *line, size_t len);
void ffdl_ui_metric(ffdl_ui *ui, const char *id, const json_t *record);
void ffdl_ui_progress(ffdl_ui *ui, const char *id, const char *what, uint64_t done, uint64_t total,
                      int final);

#endif
