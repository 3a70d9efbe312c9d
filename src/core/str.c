/* str.c: formatted allocation, strict number parsing. */
#define _GNU_SOURCE /* vasprintf */
#include "core/str.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

char *ffdl_strdup_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *out = NULL;
  if (vasprintf(&out, fmt, ap) < 0) out = NULL;
  va_end(ap);
  return out;
}

int ffdl_parse_number(const char *text, double lo, double hi, int whole, double *out) {
  if (!text) return -1;
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (end == text) return -1;
  while (*end == ' ')
    end++;
  if (*end || errno || !isfinite(v) || v < lo || v > hi || (whole && v != floor(v))) return -1;
  *out = v;
  return 0;
}
