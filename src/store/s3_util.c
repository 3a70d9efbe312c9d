/*
 * s3_util.c: pure helpers of the S3 client.
 * Owns: URI encoding, backoff arithmetic, Content-Range parsing, the
 * key <-> path mapping of directory transfers.
 * Must not: do I/O, allocate beyond the strings it returns, or log.
 */
#include "store/s3_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.' || c == '~';
}

char *ffdl_s3_uri_encode(const char *s, int keep_slash) {
  static const char hex[] = "0123456789ABCDEF";
  size_t n = strlen(s);
  char *out = malloc(n * 3 + 1);
  if (!out) return NULL;
  char *p = out;
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (unreserved(*c) || (keep_slash && *c == '/')) {
      *p++ = (char)*c;
    } else {
      *p++ = '%';
      *p++ = hex[*c >> 4];
      *p++ = hex[*c & 15];
    }
  }
  *p = '\0';
  return out;
}

unsigned ffdl_s3_backoff_ms(unsigned base_ms, unsigned cap_ms, int attempt, double r) {
  double ceiling = base_ms;
  for (int i = 0; i < attempt && ceiling < cap_ms; i++)
    ceiling *= 2;
  if (ceiling > cap_ms) ceiling = cap_ms;
  if (r < 0) r = 0;
  if (r >= 1) r = 0.999999;
  return (unsigned)(ceiling * r);
}

int ffdl_s3_retryable(long status, const char *code) {
  if (status >= 500 || status == 429) return 1;
  if (!code || !*code) return 0;
  static const char *const retry_codes[] = {"SlowDown",
                                            "Throttling",
                                            "ThrottlingException",
                                            "RequestTimeout",
                                            "InternalError",
                                            "ServiceUnavailable",
                                            "RequestLimitExceeded",
                                            "TooManyRequests",
                                            NULL};
  for (const char *const *c = retry_codes; *c; c++)
    if (strcmp(code, *c) == 0) return 1;
  return 0;
}

static int parse_u64(const char **p, uint64_t *out) {
  const char *s = *p;
  if (*s < '0' || *s > '9') return -1;
  uint64_t v = 0;
  while (*s >= '0' && *s <= '9') {
    if (v > (UINT64_MAX - 9) / 10) return -1;
    v = v * 10 + (uint64_t)(*s - '0');
    s++;
  }
  *p = s;
  *out = v;
  return 0;
}

int ffdl_s3_parse_content_range(const char *v, uint64_t *start, uint64_t *end, uint64_t *total) {
  while (*v == ' ' || *v == '\t')
    v++;
  if (strncmp(v, "bytes", 5) != 0) return -1;
  v += 5;
  while (*v == ' ')
    v++;
  if (parse_u64(&v, start) != 0 || *v++ != '-' || parse_u64(&v, end) != 0 || *v++ != '/' ||
      parse_u64(&v, total) != 0)
    return -1;
  while (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n')
    v++;
  if (*v || *start > *end || *end >= *total) return -1;
  return 0;
}

uint64_t ffdl_s3_part_size_for(uint64_t size, uint64_t part_size) {
  const uint64_t mib = 1024 * 1024;
  if (part_size == 0) part_size = 8 * mib;
  while ((size + part_size - 1) / part_size > FFDL_S3_MAX_PARTS)
    part_size += mib;
  return part_size;
}

char *ffdl_s3_join_key(const char *prefix, const char *rel) {
  size_t pn = strlen(prefix), rn = strlen(rel);
  char *out = malloc(pn + rn + 2);
  if (!out) return NULL;
  if (pn == 0) {
    memcpy(out, rel, rn + 1);
  } else if (prefix[pn - 1] == '/') {
    memcpy(out, prefix, pn);
    memcpy(out + pn, rel, rn + 1);
  } else {
    memcpy(out, prefix, pn);
    out[pn] = '/';
    memcpy(out + pn + 1, rel, rn + 1);
  }
  return out;
}

int ffdl_s3_key_to_relpath(const char *prefix, const char *key, char **out) {
  *out = NULL;
  size_t pn = strlen(prefix);
  if (strncmp(key, prefix, pn) != 0) return -1;
  const char *rel = key + pn;
  while (*rel == '/')
    rel++;
  size_t rn = strlen(rel);
  if (rn == 0 || rel[rn - 1] == '/') return 1;
  /* every component must be a plain name */
  const char *c = rel;
  while (*c) {
    const char *slash = strchr(c, '/');
    size_t len = slash ? (size_t)(slash - c) : strlen(c);
    if (len == 0 || (len == 1 && c[0] == '.') || (len == 2 && c[0] == '.' && c[1] == '.'))
      return -1;
    c += len;
    if (*c == '/') c++;
  }
  *out = strdup(rel);
  return *out ? 0 : -1;
}

const char *ffdl_s3_region(const char *region) {
  if (!region || !*region || strcmp(region, "us-standard") == 0) return "us-east-1";
  return region;
}

int ffdl_s3_bucket_ok(const char *bucket, int legacy) {
  size_t n = strlen(bucket);
  if (n < 3 || n > (legacy ? 255u : 63u)) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)bucket[i];
    int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (legacy && ((c >= 'A' && c <= 'Z') || c == '_')) alnum = 1;
    if (!alnum && c != '.' && c != '-') return 0;
    if ((i == 0 || i == n - 1) && !alnum) return 0;
  }
  return 1;
}

double ffdl_s3_rate_update(double rate, uint64_t bytes, double dt_s) {
  if (dt_s <= 0) return rate;
  double now = (double)bytes / dt_s;
  if (rate <= 0) return now;
  /* a time constant of about 2 s, whatever the tick */
  double alpha = dt_s / (dt_s + 2.0);
  return rate + alpha * (now - rate);
}
