/* The progress display (core/progress.c) on a clock the test drives: the
 * rate and ETA it shows, how often it draws, and what its last line says. */
#include "runner.h"

#include "core/progress.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIB 1048576ull

typedef struct {
  ffdl_progress p;
  char *text;
  size_t len;
} shown;

static void open_shown(shown *s, int tty) {
  memset(s, 0, sizeof *s);
  ffdl_progress_init(&s->p, "moving");
  s->p.out = open_memstream(&s->text, &s->len);
  CHECK(s->p.out);
  s->p.tty = tty;
}

/* What was drawn so far: lines, or a terminal's frames (split at \r). */
static const char *text_of(shown *s) {
  fflush(s->p.out);
  return s->text ? s->text : "";
}

static int count(const char *h, const char *needle) {
  int n = 0;
  for (const char *p = h; (p = strstr(p, needle)); p += strlen(needle))
    n++;
  return n;
}

/* Every rate the text shows, in MiB/s, must be at most MAX. */
static void check_rates_below(const char *text, double max) {
  for (const char *p = text; (p = strstr(p, " MiB/s")); p++) {
    const char *start = p;
    while (start > text && (start[-1] == '.' || (start[-1] >= '0' && start[-1] <= '9')))
      start--;
    if (start == p) continue; /* "? MiB/s" */
    double rate = strtod(start, NULL);
    if (rate > max) {
      fprintf(stderr, "rate %.1f MiB/s over %.1f in:\n%s\n", rate, max, text);
      exit(1);
    }
  }
}

static void close_shown(shown *s) {
  fclose(s->p.out);
  free(s->text);
}

/* Bytes stop moving: the rate over the window decays towards 0, and the
 * remaining bytes over it would give an ETA of hours; after 2 s without a
 * byte the ETA is unknown, and it comes back when bytes move again. */
static void test_a_stall_has_no_eta(void) {
  ffdl_progress p;
  ffdl_progress_init(&p, "stalling");
  double rate, eta, t = 10.0;
  uint64_t done = 0;
  for (int i = 0; i < 12; i++, t += 0.25)
    ffdl_progress_estimate_at(&p, done += MIB, 100 * MIB, t, &rate, &eta);
  CHECK(rate > 3 * MIB && eta > 0 && eta < 30); /* 4 MiB/s, 88 MiB to go */
  ffdl_progress_estimate_at(&p, done, 100 * MIB, t + 1.5, &rate, &eta);
  CHECK(eta > 0); /* a short wait: still an estimate */
  ffdl_progress_estimate_at(&p, done, 100 * MIB, t + 2.5, &rate, &eta);
  CHECK(eta < 0 && rate >= 0); /* stalled: a rate (falling), no ETA */
  ffdl_progress_estimate_at(&p, done + MIB, 100 * MIB, t + 2.75, &rate, &eta);
  CHECK(eta > 0); /* moving again */
  ffdl_progress_estimate_at(&p, 100 * MIB, 100 * MIB, t + 3.0, &rate, &eta);
  CHECK(eta == 0); /* all there */
}

/* ffdl_progress_estimate's figures are the ones the drawn line shows. */
static void test_estimate_gives_what_a_line_shows(void) {
  shown s;
  open_shown(&s, 0);
  ffdl_progress meter;
  ffdl_progress_init(&meter, "meter");
  double rate = 0, eta = 0, t = 1.0;
  for (int i = 1; i <= 5; i++) { /* lines at 1.5 s (the first) and 3.5 s (2 s on) */
    t += 0.5;
    ffdl_progress_report_at(&s.p, (uint64_t)i * MIB, 64 * MIB, FFDL_PROGRESS_RUNNING, t);
    ffdl_progress_estimate_at(&meter, (uint64_t)i * MIB, 64 * MIB, t, &rate, &eta);
    if (i == 1) CHECK(rate < 0 && eta < 0); /* one sample: nothing known */
  }
  CHECK(count(text_of(&s), "\n") == 2 && rate > 0 && eta > 0);
  char want[64];
  snprintf(want, sizeof want, "%.1f MiB/s, ETA %.0f s", rate / MIB, eta);
  CHECK(strstr(text_of(&s), want));
  close_shown(&s);
}

/* The first report comes with bytes already moved: its "rate" would divide
 * by the microseconds since the bar began. */
static void test_first_report_shows_no_rate(void) {
  shown s;
  open_shown(&s, 0);
  ffdl_progress_report_at(&s.p, 8 * MIB + MIB / 2, 300 * MIB, FFDL_PROGRESS_RUNNING, 100.0);
  CHECK_CONTAINS(text_of(&s), "moving: 8.5 of 300.0 MiB, ? MiB/s, ETA ?\n");
  /* 10 MiB/s from then on: measured once a second of samples backs it */
  for (int i = 1; i <= 12; i++)
    ffdl_progress_report_at(&s.p, 8 * MIB + MIB / 2 + (uint64_t)i * 10 * MIB / 4, 300 * MIB,
                            FFDL_PROGRESS_RUNNING, 100.0 + i * 0.25);
  CHECK_CONTAINS(text_of(&s), "10.0 MiB/s, ETA ");
  check_rates_below(text_of(&s), 10.5);
  close_shown(&s);
}

/* A wait before the first byte (a server that zips first) does not count
 * in the rate, and an old slow phase leaves the rate within a few seconds. */
static void test_rate_is_recent(void) {
  shown s;
  open_shown(&s, 0);
  double t = 0;
  for (; t < 10; t += 0.25)
    ffdl_progress_report_at(&s.p, 0, 100 * MIB, FFDL_PROGRESS_RUNNING, t);
  uint64_t done = 0;
  for (int i = 0; i < 16; i++, t += 0.25) /* 4 MiB/s for 4 s */
    ffdl_progress_report_at(&s.p, done += MIB, 100 * MIB, FFDL_PROGRESS_RUNNING, t);
  /* the last line drawn says 4 MiB/s, not 16 MiB over 14 s */
  const char *last = strrchr(text_of(&s), '\n');
  while (last > text_of(&s) && last[-1] != '\n')
    last--;
  CHECK_CONTAINS(last, " 4.0 MiB/s, ETA 2");
  check_rates_below(text_of(&s), 4.1);
  close_shown(&s);
}

/* A retry sends bytes again: the line says so (not a bare count going back),
 * and the ETA is unknown rather than huge while nothing moves. */
static void test_bytes_sent_again_say_retrying(void) {
  shown s;
  open_shown(&s, 0);
  double t = 0;
  uint64_t done = 0;
  for (; t < 8; t += 0.25)
    ffdl_progress_report_at(&s.p, done += 2 * MIB, 300 * MIB, FFDL_PROGRESS_RUNNING, t);
  size_t before = strlen(text_of(&s));
  ffdl_progress_report_at(&s.p, 0, 300 * MIB, FFDL_PROGRESS_RUNNING, t); /* rolled back */
  const char *after = text_of(&s) + before;
  CHECK_CONTAINS(after, "0.0 of 300.0 MiB, ? MiB/s, ETA ?, retrying (64.0 MiB to send again)\n");
  /* the server is away for a minute: no ETA from a rate that tends to 0 */
  for (double end = t + 60; t < end; t += 0.25)
    ffdl_progress_report_at(&s.p, 0, 300 * MIB, FFDL_PROGRESS_RUNNING, t);
  after = text_of(&s) + before;
  CHECK(count(after, "retrying (64.0 MiB to send again)") >= 20);
  CHECK(!strstr(after, "ETA 1") && !strstr(after, "ETA 2")); /* no number at all */
  /* it comes back at 8 MiB/s: a rate from the resumption, an ETA again */
  before = strlen(text_of(&s));
  done = 0;
  for (double end = t + 12; t < end; t += 0.25)
    ffdl_progress_report_at(&s.p, done += 2 * MIB, 300 * MIB, FFDL_PROGRESS_RUNNING, t);
  after = text_of(&s) + before;
  CHECK_CONTAINS(after, "8.0 MiB/s, ETA ");
  check_rates_below(after, 8.1);
  close_shown(&s);
}

/* A source that knows of the retry says so even before bytes go back. */
static void test_retrying_state_is_shown_at_once(void) {
  shown s;
  open_shown(&s, 0);
  ffdl_progress_report_at(&s.p, 5 * MIB, 10 * MIB, FFDL_PROGRESS_RUNNING, 1.0);
  ffdl_progress_report_at(&s.p, 5 * MIB, 10 * MIB, FFDL_PROGRESS_RETRYING, 1.25);
  CHECK_CONTAINS(text_of(&s), "5.0 of 10.0 MiB, ? MiB/s, ETA ?, retrying a failed request\n");
  close_shown(&s);
}

static void test_failed_transfer_says_failed(void) {
  shown s;
  open_shown(&s, 0);
  ffdl_progress_report_at(&s.p, 0, 0, FFDL_PROGRESS_RUNNING, 1.0);
  ffdl_progress_report_at(&s.p, 0, 0, FFDL_PROGRESS_FAILED, 5.0);
  CHECK_CONTAINS(text_of(&s), "moving: 0.0 MiB, 0.0 MiB/s (failed)\n");
  CHECK(!strstr(text_of(&s), "(done)"));
  /* nothing after the last line */
  size_t len = strlen(text_of(&s));
  ffdl_progress_report_at(&s.p, 0, 0, FFDL_PROGRESS_RUNNING, 9.0);
  ffdl_progress_finish(&s.p, 0, 0);
  CHECK(strlen(text_of(&s)) == len);
  close_shown(&s);
}

static void test_done_says_done_with_the_average(void) {
  shown s;
  open_shown(&s, 0);
  for (int i = 0; i <= 8; i++)
    ffdl_progress_report_at(&s.p, (uint64_t)i * MIB, 8 * MIB, i == 8, 10.0 + i * 0.5);
  CHECK_CONTAINS(text_of(&s), "moving: 8.0 of 8.0 MiB, 2.0 MiB/s (done)\n");
  close_shown(&s);
}

/* Under a second from the first report to the last, no rate is known:
 * the last line says none, rather than "? MiB/s (done)". */
static void test_a_short_transfer_ends_without_a_rate(void) {
  shown s;
  open_shown(&s, 0);
  ffdl_progress_report_at(&s.p, 0, 200 * 1024, FFDL_PROGRESS_RUNNING, 10.0);
  ffdl_progress_report_at(&s.p, 200 * 1024, 200 * 1024, FFDL_PROGRESS_DONE, 10.3);
  CHECK_CONTAINS(text_of(&s), "moving: 0.0 of 200.0 KiB, ? MiB/s, ETA ?\n");
  CHECK_CONTAINS(text_of(&s), "moving: 200.0 of 200.0 KiB (done)\n");
  close_shown(&s);
}

/* Sizes under a MiB read in KiB (a job's few bytes of results were
 * "0.0 of 0.0 MiB"); from a MiB on, and while the size is unknown, MiB. */
static void test_small_sizes_read_in_kib(void) {
  shown s;
  open_shown(&s, 0);
  ffdl_progress_report_at(&s.p, 300, 300, FFDL_PROGRESS_DONE, 10.0);
  CHECK_CONTAINS(text_of(&s), "moving: 0.3 of 0.3 KiB (done)\n");
  close_shown(&s);
  open_shown(&s, 0);
  ffdl_progress_report_at(&s.p, 512 * 1024, 1024 * 1024, FFDL_PROGRESS_RUNNING, 10.0);
  CHECK_CONTAINS(text_of(&s), "moving: 0.5 of 1.0 MiB, ? MiB/s, ETA ?\n");
  close_shown(&s);
  open_shown(&s, 0);
  ffdl_progress_report_at(&s.p, 300, 0, FFDL_PROGRESS_RUNNING, 10.0);
  CHECK_CONTAINS(text_of(&s), "moving: 0.0 MiB, ? MiB/s\n");
  close_shown(&s);
}

/* Every byte moved, the answer still to come (a large upload's
 * CompleteMultipartUpload can take seconds): "finishing", not "ETA 0 s". */
static void test_all_bytes_moved_says_finishing(void) {
  shown s;
  open_shown(&s, 0);
  for (int i = 0; i <= 8; i++)
    ffdl_progress_report_at(&s.p, (uint64_t)i * MIB, 8 * MIB, FFDL_PROGRESS_RUNNING, 10.0 + i);
  ffdl_progress_report_at(&s.p, 8 * MIB, 8 * MIB, FFDL_PROGRESS_RUNNING, 22.0);
  CHECK_CONTAINS(text_of(&s), "moving: 8.0 of 8.0 MiB, 1.0 MiB/s, finishing\n");
  CHECK(!strstr(text_of(&s), "ETA 0 s"));
  close_shown(&s);
}

/* A terminal: curl reports many times a second, often the same figures
 * twice; the bar is drawn again only when it changes, at most 5 times a
 * second. */
static void test_terminal_frames_are_not_repeated(void) {
  shown s;
  open_shown(&s, 1);
  double t = 0;
  for (; t < 4; t += 0.01) { /* waiting for the answer's first byte */
    ffdl_progress_report_at(&s.p, 0, 0, FFDL_PROGRESS_RUNNING, t);
    ffdl_progress_report_at(&s.p, 0, 0, FFDL_PROGRESS_RUNNING, t);
  }
  /* "0.0 MiB, ? MiB/s", then "0.0 MiB, 0.0 MiB/s" once a second backs it */
  CHECK(count(text_of(&s), "\r") == 2);
  uint64_t done = 0;
  for (double end = t + 4; t < end; t += 0.01) {
    done += 40 * 1024;
    ffdl_progress_report_at(&s.p, done, 16 * MIB, FFDL_PROGRESS_RUNNING, t);
    ffdl_progress_report_at(&s.p, done, 16 * MIB, FFDL_PROGRESS_RUNNING, t);
  }
  ffdl_progress_finish(&s.p, 16 * MIB, 16 * MIB);
  const char *text = text_of(&s);
  int frames = count(text, "\r");
  CHECK(frames >= 10 && frames <= 4 / 0.2 + 3);
  /* no frame equals the one before it */
  char *copy = strdup(text), *save = NULL, *prev = NULL;
  for (char *f = strtok_r(copy, "\r", &save); f; f = strtok_r(NULL, "\r", &save)) {
    CHECK(!prev || strcmp(prev, f) != 0);
    prev = f;
  }
  free(copy);
  CHECK(text[strlen(text) - 1] == '\n');
  check_rates_below(text, 4.0);
  close_shown(&s);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"first_report_shows_no_rate", test_first_report_shows_no_rate},
      {"a_stall_has_no_eta", test_a_stall_has_no_eta},
      {"estimate_gives_what_a_line_shows", test_estimate_gives_what_a_line_shows},
      {"rate_is_recent", test_rate_is_recent},
      {"bytes_sent_again_say_retrying", test_bytes_sent_again_say_retrying},
      {"retrying_state_is_shown_at_once", test_retrying_state_is_shown_at_once},
      {"failed_transfer_says_failed", test_failed_transfer_says_failed},
      {"done_says_done_with_the_average", test_done_says_done_with_the_average},
      {"a_short_transfer_ends_without_a_rate", test_a_short_transfer_ends_without_a_rate},
      {"small_sizes_read_in_kib", test_small_sizes_read_in_kib},
      {"all_bytes_moved_says_finishing", test_all_bytes_moved_says_finishing},
      {"terminal_frames_are_not_repeated", test_terminal_frames_are_not_repeated},
      {NULL, NULL},
  };
  return run_tests(cases, argc, argv);
}
