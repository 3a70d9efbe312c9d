/*
 * progress.c: one progress display on stderr.
 * Owns: the bar and the line format (bytes, rate, ETA). Must not: decide
 * what is being transferred.
 */
#include "core/progress.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define LINE_EVERY_S 2.0

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void ffdl_progress_init(ffdl_progress *p, const char *label) {
  p->label = label;
  p->tty = isatty(2);
  p->started = now_s();
  p->last_line = 0;
  p->done = 0;
}

static void describe(const ffdl_progress *p, uint64_t done, uint64_t total, char *out, size_t cap) {
  double secs = now_s() - p->started;
  double rate = secs > 0 ? (double)done / secs : 0;
  double mib = (double)done / 1048576.0;
  if (total > 0) {
    double eta = rate > 0 ? (double)(total - (done < total ? done : total)) / rate : -1;
    snprintf(out, cap, "%.1f of %.1f MiB, %.1f MiB/s, ETA %s%.0f s", mib, (double)total / 1048576.0,
             rate / 1048576.0, eta < 0 ? "~" : "", eta < 0 ? 0 : eta);
  } else {
    snprintf(out, cap, "%.1f MiB, %.1f MiB/s", mib, rate / 1048576.0);
  }
}

static void draw(ffdl_progress *p, uint64_t done, uint64_t total, int final) {
  char text[160];
  describe(p, done, total, text, sizeof text);
  if (p->tty) {
    int width = 24, filled = total ? (int)((double)width * (double)done / (double)total) : 0;
    if (filled > width) filled = width;
    char bar[32];
    for (int i = 0; i < width; i++)
      bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r%s [%s] %s\033[K%s", p->label, bar, text, final ? "\n" : "");
  } else {
    fprintf(stderr, "%s: %s%s\n", p->label, text, final ? " (done)" : "");
  }
  fflush(stderr);
}

void ffdl_progress_update(ffdl_progress *p, uint64_t done, uint64_t total) {
  if (p->done) return;
  double t = now_s();
  if (!p->tty && t - p->last_line < LINE_EVERY_S) return;
  p->last_line = t;
  draw(p, done, total, 0);
}

void ffdl_progress_finish(ffdl_progress *p, uint64_t done, uint64_t total) {
  if (p->done) return;
  p->done = 1;
  draw(p, done, total, 1);
}
