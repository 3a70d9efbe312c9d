/*
 * ui.c: live progress for people: transitions with their time, learner
 * lines prefixed by learner number, and a progress line per metric record.
 * Owns: formatting only. Must not: change job state.
 */
#include "app/ui.h"
#include "orch/metrics.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static void stamp(char *out, size_t cap) {
  time_t now = time(NULL);
  struct tm tm;
  localtime_r(&now, &tm);
  strftime(out, cap, "%H:%M:%S", &tm);
}

void ffdl_ui_transition(ffdl_ui *ui, const char *id, const char *status, const char *reason,
                        const char *code) {
  if (ui->quiet) return;
  char t[16];
  stamp(t, sizeof t);
  /* a reason may hold several lines (a failure's log tail): indent them */
  fprintf(stderr, "[%s] %s: %s%s%s%s%s", t, id, status, code ? " " : "", code ? code : "",
          reason && *reason ? ": " : "", "");
  for (const char *p = reason ? reason : ""; *p; p++) {
    fputc(*p, stderr);
    if (*p == '\n' && p[1]) fputs("    ", stderr);
  }
  fputc('\n', stderr);
}

void ffdl_ui_waiting(ffdl_ui *ui, const char *id, const char *reason) {
  if (ui->quiet) return;
  char t[16];
  stamp(t, sizeof t);
  fprintf(stderr, "[%s] %s: QUEUED, waiting: %s\n", t, id, reason);
}

void ffdl_ui_line(ffdl_ui *ui, const char *id, int learner, const char *line, size_t len) {
  if (ui->quiet || !ui->show_lines) return;
  if (ui->prefix_ids)
    fprintf(stderr, "[%s %d] %.*s\n", id, learner, (int)len, line);
  else
    fprintf(stderr, "[%d] %.*s\n", learner, (int)len, line);
}

void ffdl_ui_metric(ffdl_ui *ui, const char *id, const json_t *record) {
  if (ui->quiet) return;
  char text[256];
  ffdl_metrics_describe(record, text, sizeof text);
  if (!*text) return;
  char t[16];
  stamp(t, sizeof t);
  fprintf(stderr, "[%s] %s: progress: %s\n", t, id, text);
}

/* The slot of the transfer LABEL: the same transfer keeps its bar, and with
 * it the samples of its rate; a new one takes a free slot, else the next. */
static size_t bar_for(ffdl_ui *ui, const char *label) {
  size_t n = sizeof ui->bars / sizeof ui->bars[0], free_slot = n;
  for (size_t i = 0; i < n; i++) {
    if (!strcmp(ui->bars[i].label, label)) return i;
    if (!ui->bars[i].label[0] && free_slot == n) free_slot = i;
  }
  size_t i = free_slot < n ? free_slot : ui->next_bar++ % n;
  snprintf(ui->bars[i].label, sizeof ui->bars[i].label, "%s", label);
  ffdl_progress_init(&ui->bars[i].bar, ui->bars[i].label);
  return i;
}

void ffdl_ui_progress(ffdl_ui *ui, const char *id, const char *what, uint64_t done, uint64_t total,
                      int state) {
  if (ui->quiet) return;
  char label[160];
  snprintf(label, sizeof label, "%s: %s", id, what);
  size_t i = bar_for(ui, label);
  ffdl_progress_report(&ui->bars[i].bar, done, total, state);
  if (state == FFDL_PROGRESS_DONE || state == FFDL_PROGRESS_FAILED) ui->bars[i].label[0] = '\0';
}

static void on_transition(void *ud, const char *id, const char *status, const char *reason,
                          const char *code) {
  ffdl_ui_transition(ud, id, status, reason, code);
}
static void on_waiting(void *ud, const char *id, const char *reason) {
  ffdl_ui_waiting(ud, id, reason);
}
static void on_line(void *ud, const char *id, int learner, const char *line, size_t len) {
  ffdl_ui_line(ud, id, learner, line, len);
}
static void on_metric(void *ud, const char *id, const json_t *record) {
  ffdl_ui_metric(ud, id, record);
}

static void on_progress(void *ud, const char *id, const char *what, uint64_t done, uint64_t total,
                        int state) {
  ffdl_ui_progress(ud, id, what, done, total, state);
}

const ffdl_orch_observer ffdl_ui_observer = {on_transition, on_waiting, on_line,
                                             on_metric,     NULL,       on_progress};
