/*
 * multipart.c: a small multipart/form-data splitter (RFC 7578).
 * Owns: boundary search and Content-Disposition names. Must not: copy
 * part data (parts point into the request body).
 */
#include "api/multipart.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *find(const char *hay, size_t hay_len, const char *needle, size_t n) {
  if (n == 0 || hay_len < n) return NULL;
  for (size_t i = 0; i + n <= hay_len; i++)
    if (hay[i] == needle[0] && memcmp(hay + i, needle, n) == 0) return hay + i;
  return NULL;
}

/* Copies the value of PARAM="..." (or PARAM=token) from HEADER into OUT. */
static void header_param(const char *header, size_t len, const char *param, char *out, size_t cap) {
  out[0] = '\0';
  size_t n = strlen(param);
  for (size_t i = 0; i + n + 1 < len; i++) {
    if (strncasecmp(header + i, param, n) != 0 || header[i + n] != '=') continue;
    if (i > 0 && header[i - 1] != ' ' && header[i - 1] != ';') continue;
    const char *v = header + i + n + 1;
    const char *end = header + len;
    size_t k = 0;
    if (*v == '"') {
      for (v++; v < end && *v != '"' && k + 1 < cap; v++)
        out[k++] = *v;
    } else {
      for (; v < end && *v != ';' && *v != ' ' && *v != '\r' && k + 1 < cap; v++)
        out[k++] = *v;
    }
    out[k] = '\0';
    return;
  }
}

/* Parses one part's headers; returns the start of its data or NULL. */
static const char *part_headers(const char *p, const char *end, ffdl_part *part) {
  const char *blank = find(p, (size_t)(end - p), "\r\n\r\n", 4);
  if (!blank) return NULL;
  const char *line = p;
  while (line < blank) {
    const char *eol = find(line, (size_t)(blank + 2 - line), "\r\n", 2);
    if (!eol) break;
    if ((size_t)(eol - line) > 20 && strncasecmp(line, "content-disposition:", 20) == 0) {
      header_param(line, (size_t)(eol - line), "name", part->name, sizeof part->name);
      header_param(line, (size_t)(eol - line), "filename", part->filename, sizeof part->filename);
    }
    line = eol + 2;
  }
  return blank + 4;
}

int ffdl_multipart_parse(const char *content_type, const char *body, size_t len, ffdl_part *parts,
                         int max) {
  if (!content_type || strncasecmp(content_type, "multipart/form-data", 19) != 0) return -1;
  char boundary[200];
  header_param(content_type, strlen(content_type), "boundary", boundary, sizeof boundary);
  if (!boundary[0]) return -1;
  char delim[210];
  int dlen = snprintf(delim, sizeof delim, "--%s", boundary);
  const char *end = body + len;
  const char *p = find(body, len, delim, (size_t)dlen);
  int n = 0;
  while (p && n < max) {
    p += dlen;
    if (end - p >= 2 && p[0] == '-' && p[1] == '-') break; /* the closing delimiter */
    if (end - p >= 2 && p[0] == '\r' && p[1] == '\n') p += 2;
    ffdl_part *part = &parts[n];
    memset(part, 0, sizeof *part);
    const char *data = part_headers(p, end, part);
    if (!data) return -1;
    char next_delim[214];
    int nlen = snprintf(next_delim, sizeof next_delim, "\r\n%s", delim);
    const char *next = find(data, (size_t)(end - data), next_delim, (size_t)nlen);
    if (!next) return -1;
    part->data = data;
    part->len = (size_t)(next - data);
    n++;
    p = next + 2;
  }
  return n;
}

const ffdl_part *ffdl_multipart_find(const ffdl_part *parts, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(parts[i].name, name) == 0) return &parts[i];
  return NULL;
}
