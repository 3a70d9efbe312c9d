/* str.c: formatted allocation. */
#define _GNU_SOURCE /* vasprintf */
#include "core/str.h"

#include <stdarg.h>
#include <stdio.h>

char *ffdl_strdup_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *out = NULL;
  if (vasprintf(&out, fmt, ap) < 0) out = NULL;
  va_end(ap);
  return out;
}
