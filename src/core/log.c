/*
 * log.c: leveled, timestamped log lines on stderr.
 * Owns: the process log level. Must not: allocate or call into Lua.
 * Thread-safe: the thread pool logs too (a policy reload builds there), so
 * the level is atomic and each line is written under stderr's lock, whole.
 */
#include "core/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static _Atomic int current_level = FFDL_LOG_WARN;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

int ffdl_log_parse_level(const char *name) {
  for (int i = 0; i < 4; i++)
    if (name && strcmp(name, level_names[i]) == 0) return i;
  return -1;
}

void ffdl_log_init(void) {
  int level = ffdl_log_parse_level(getenv("FFDL_LOG"));
  if (level >= 0) ffdl_log_set_level((ffdl_log_level)level);
}

void ffdl_log_set_level(ffdl_log_level level) {
  atomic_store_explicit(&current_level, (int)level, memory_order_relaxed);
}

int ffdl_log_enabled(ffdl_log_level level) {
  return (int)level >= atomic_load_explicit(&current_level, memory_order_relaxed);
}

void ffdl_log(ffdl_log_level level, const char *fmt, ...) {
  if (!ffdl_log_enabled(level)) return;
  char stamp[32];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
  /* one line at a time, even when two threads log at once */
  flockfile(stderr);
  fprintf(stderr, "%s.%03ld ffdl %s: ", stamp, ts.tv_nsec / 1000000, level_names[level]);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  funlockfile(stderr);
}
