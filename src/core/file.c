/*
 * file.c: bounded whole-file reads for manifests, scripts and policies.
 * Owns: nothing long-lived. Must not: interpret the bytes it reads.
 */
#include "core/file.h"
#include "core/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int ffdl_file_read(const char *path, size_t limit, char **out, size_t *len) {
  *out = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return errno == ENOENT ? FFDL_ENOENT : FFDL_EIO;
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || S_ISDIR(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) errno = EISDIR;
    fclose(f);
    return FFDL_EIO;
  }
  /* Read one byte past the limit so that growing files are caught too. */
  size_t cap = (size_t)st.st_size < limit ? (size_t)st.st_size + 1 : limit + 1;
  char *buf = malloc(cap + 1);
  if (!buf) {
    fclose(f);
    return FFDL_ENOMEM;
  }
  size_t got = 0;
  for (;;) {
    size_t n = fread(buf + got, 1, cap - got, f);
    got += n;
    if (got > limit) {
      free(buf);
      fclose(f);
      return FFDL_ETOOBIG;
    }
    if (n == 0) break;
    if (got == cap) {
      cap = cap * 2 > limit + 1 ? limit + 1 : cap * 2;
      char *grown = realloc(buf, cap + 1);
      if (!grown) {
        free(buf);
        fclose(f);
        return FFDL_ENOMEM;
      }
      buf = grown;
    }
  }
  int failed = ferror(f);
  fclose(f);
  if (failed) {
    free(buf);
    return FFDL_EIO;
  }
  buf[got] = '\0';
  *out = buf;
  *len = got;
  return FFDL_OK;
}

int ffdl_file_is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}
