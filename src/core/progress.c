/*
 * progress.c: one progress display on stderr.
 * Owns: the bar and the line format (bytes, rate, ETA, retries), and how
 * often they are drawn. Must not: decide what is being transferred.
 *
 * The rate comes from samples of the last few seconds: an average from the
 * start counts the wait before the first byte (an ETA far too long), and a
 * rate taken from the first report alone divides by almost nothing. Bytes
 * that go back (a failed request's, to be sent again) start the samples
 * over, and the line says that a retry is going on.
 */
#include "core/progress.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SAMPLE_S 0.25    /* a sample for the rate at most this often */
#define WINDOW_S 5.0     /* the rate covers about the last 5 s */
#define MIN_SPAN_S 1.0   /* no rate before the samples span a second */
#define STALL_S 2.0      /* no byte moved for this long: the ETA is unknown, not huge */
#define TTY_EVERY_S 0.2  /* a terminal's bar is redrawn at most 5 times a second */
#define LINE_EVERY_S 2.0 /* elsewhere, a line every 2 s */
#define MIB 1048576.0

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void ffdl_progress_init(ffdl_progress *p, const char *label) {
  memset(p, 0, sizeof *p);
  p->label = label;
  p->out = stderr;
  p->tty = isatty(2);
  p->first_t = -1;
}

static int slot(const ffdl_progress *p, int i) {
  return (p->head + i) % FFDL_PROGRESS_SAMPLES;
}

static void drop_oldest(ffdl_progress *p) {
  p->head = slot(p, 1);
  p->n--;
}

static void sample(ffdl_progress *p, uint64_t done, double now) {
  if (p->first_t < 0) {
    p->first_t = p->moved_t = now;
    p->first_b = done;
  } else if (done > p->last_b) {
    p->moved_t = now;
  }
  p->last_b = done;
  if (done > p->high) p->high = done;
  if (p->n && done < p->b[slot(p, p->n - 1)]) p->n = 0; /* sent again: the rate starts over */
  /* bytes that start moving (or move again after a wait): the rate is
   * measured from the last sample before they did, not across the wait */
  if (p->n > 1 && done > p->b[slot(p, p->n - 1)] && p->b[p->head] == p->b[slot(p, p->n - 1)]) {
    p->head = slot(p, p->n - 1);
    p->n = 1;
  }
  if (p->n == 0 || now - p->t[slot(p, p->n - 1)] >= SAMPLE_S) {
    if (p->n == FFDL_PROGRESS_SAMPLES) drop_oldest(p);
    int i = slot(p, p->n++);
    p->t[i] = now;
    p->b[i] = done;
  }
  while (p->n > 1 && now - p->t[slot(p, 1)] >= WINDOW_S)
    drop_oldest(p);
}

/* Bytes per second from the sample at FROM_T (FROM_B bytes) to NOW, or -1
 * while they span too little time to say. */
static double rate_since(double from_t, uint64_t from_b, uint64_t done, double now) {
  double span = now - from_t;
  if (from_t < 0 || span < MIN_SPAN_S) return -1;
  return done > from_b ? (double)(done - from_b) / span : 0;
}

static void append(char *out, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void append(char *out, size_t cap, const char *fmt, ...) {
  size_t n = strlen(out);
  if (n >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out + n, cap - n, fmt, ap);
  va_end(ap);
}

static int is_final(int state) {
  return state == FFDL_PROGRESS_DONE || state == FFDL_PROGRESS_FAILED;
}

/* Whether a retry is going on: the transfer says so, or its count fell
 * below the most it had reached (bytes to send again). */
static int is_retrying(const ffdl_progress *p, uint64_t done, int state) {
  return !is_final(state) && (state == FFDL_PROGRESS_RETRYING || done < p->high);
}

/* The rate (bytes/s) and the ETA (s) for DONE of TOTAL at NOW, once DONE
 * is sampled, each < 0 while unknown. FINAL: the rate is the whole transfer's average;
 * before, the recent rate. During a stall the rate decays towards 0, and
 * the remaining bytes over it grow to days for what may resume in a second:
 * the ETA is unknown instead. */
static void estimate(const ffdl_progress *p, uint64_t done, uint64_t total, int final, double now,
                     double *rate, double *eta) {
  *rate = final  ? rate_since(p->first_t, p->first_b, done, now)
          : p->n ? rate_since(p->t[p->head], p->b[p->head], done, now)
                 : -1;
  *eta = -1;
  if (total > 0 && done >= total)
    *eta = 0;
  else if (total > 0 && *rate > 0 && now - p->moved_t < STALL_S)
    *eta = (double)(total - done) / *rate;
}

void ffdl_progress_estimate_at(ffdl_progress *p, uint64_t done, uint64_t total, double now,
                               double *rate, double *eta) {
  sample(p, done, now);
  estimate(p, done, total, 0, now, rate, eta);
}

void ffdl_progress_estimate(ffdl_progress *p, uint64_t done, uint64_t total, double *rate,
                            double *eta) {
  ffdl_progress_estimate_at(p, done, total, now_s(), rate, eta);
}

/* DONE of TOTAL in MiB, or in KiB when TOTAL is known and under a MiB, so
 * that a small transfer (a job's few results) never reads "0.0 of 0.0 MiB". */
static void append_sizes(char *out, size_t cap, uint64_t done, uint64_t total) {
  if (total > 0 && total < MIB)
    append(out, cap, "%.1f of %.1f KiB", (double)done / 1024, (double)total / 1024);
  else if (total > 0)
    append(out, cap, "%.1f of %.1f MiB", (double)done / MIB, (double)total / MIB);
  else
    append(out, cap, "%.1f MiB", (double)done / MIB);
}

static void describe(const ffdl_progress *p, uint64_t done, uint64_t total, int state, double now,
                     char *out, size_t cap) {
  int final = is_final(state);
  out[0] = '\0';
  append_sizes(out, cap, done, total);
  double rate, eta;
  estimate(p, done, total, final, now, &rate, &eta);
  if (rate >= 0)
    append(out, cap, ", %.1f MiB/s", rate / MIB);
  else if (!final) /* not yet known: never a guess */
    append(out, cap, ", ? MiB/s");
  /* a transfer over in less than a second ends with no rate at all */
  if (!final && total > 0) {
    if (done >= total) /* every byte moved; the answer (or the last step) is still to come */
      append(out, cap, ", finishing");
    else if (eta >= 0)
      append(out, cap, ", ETA %.0f s", eta);
    else
      append(out, cap, ", ETA ?");
  }
  if (is_retrying(p, done, state)) {
    if (done < p->high)
      append(out, cap, ", retrying (%.1f MiB to send again)", (double)(p->high - done) / MIB);
    else
      append(out, cap, ", retrying a failed request");
  }
  if (final) append(out, cap, "%s", state == FFDL_PROGRESS_DONE ? " (done)" : " (failed)");
}

void ffdl_progress_report_at(ffdl_progress *p, uint64_t done, uint64_t total, int state,
                             double now) {
  if (p->done) return;
  int final = is_final(state);
  sample(p, done, now);
  char text[200], frame[sizeof p->last_text];
  describe(p, done, total, state, now, text, sizeof text);
  if (p->tty) {
    int width = 24, filled = total ? (int)((double)width * (double)done / (double)total) : 0;
    if (filled > width) filled = width;
    char bar[32];
    for (int i = 0; i < width; i++)
      bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    snprintf(frame, sizeof frame, "[%s] %s", bar, text);
  } else {
    snprintf(frame, sizeof frame, "%s", text);
  }
  int retrying = is_retrying(p, done, state);
  if (!final && p->drawn) {
    int news = retrying && !p->was_retrying; /* a retry starts: said at once */
    if (!news && now - p->last_draw < (p->tty ? TTY_EVERY_S : LINE_EVERY_S)) return;
    if (p->tty && strcmp(frame, p->last_text) == 0) return; /* the same frame again */
  }
  p->done = final;
  p->drawn = 1;
  p->was_retrying = retrying;
  p->last_draw = now;
  snprintf(p->last_text, sizeof p->last_text, "%s", frame);
  if (p->tty)
    fprintf(p->out, "\r%s %s\033[K%s", p->label, frame, final ? "\n" : "");
  else
    fprintf(p->out, "%s: %s\n", p->label, frame);
  fflush(p->out);
}

void ffdl_progress_report(ffdl_progress *p, uint64_t done, uint64_t total, int state) {
  ffdl_progress_report_at(p, done, total, state, now_s());
}

void ffdl_progress_update(ffdl_progress *p, uint64_t done, uint64_t total) {
  ffdl_progress_report(p, done, total, FFDL_PROGRESS_RUNNING);
}

void ffdl_progress_finish(ffdl_progress *p, uint64_t done, uint64_t total) {
  ffdl_progress_report(p, done, total, FFDL_PROGRESS_DONE);
}

void ffdl_progress_fail(ffdl_progress *p, uint64_t done, uint64_t total) {
  ffdl_progress_report(p, done, total, FFDL_PROGRESS_FAILED);
}
