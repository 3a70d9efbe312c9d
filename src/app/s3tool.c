/*
 * s3tool.c: one S3 operation of src/store/s3.h on a uv loop, for tests,
 * benchmarks and people.
 * Owns: argument parsing, progress lines on stderr, the exit status.
 * Must not: print the secret key, or do any S3 work itself.
 *
 *   s3tool [OPTIONS] ENDPOINT ACCESS SECRET COMMAND ARGS...
 *     mb BUCKET                       create a bucket
 *     put BUCKET KEY [FILE|-]         one PUT from memory (at most 64 MiB)
 *     get BUCKET KEY [FILE|-]         one GET into memory, then FILE or stdout
 *     upload BUCKET KEY FILE          a file (multipart above the part size)
 *     download BUCKET KEY FILE        a file (ranged GETs in parallel)
 *     upload-dir BUCKET PREFIX DIR    every file under DIR
 *     download-prefix BUCKET PREFIX DIR
 *     list BUCKET [PREFIX]            "SIZE<TAB>ETAG<TAB>KEY" lines (--json: one JSON array)
 *     abort-uploads BUCKET [PREFIX]   abort every incomplete multipart upload under PREFIX:
 *                                     "UPLOAD-ID<TAB>KEY" for each
 *
 * SECRET "-" reads the secret from $S3_SECRET_KEY (keeps it out of ps).
 * --checksum=crc32c|sha256 picks what S3 checks upload bodies against
 * (default: crc32c, unsigned; sha256 signs each body, which over plain http
 * also makes a body changed on the way fail, for ~0.6 CPU s/GiB more);
 * --ca-bundle=FILE (or $AWS_CA_BUNDLE) names the CAs to trust over https.
 * Exit status: 0 done (or --help), 1 the operation failed (S3's code and
 * message on stderr), 2 bad usage: an unknown option, an option's value out
 * of range (each named), a bucket name S3 would refuse.
 */
#include "core/error.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/str.h"
#include "store/s3.h"
#include "store/s3_util.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct {
  const char *name;
  int status;
  ffdl_s3_error err;
  int quiet;
  int json;
  json_t *listing;
  FILE *out;
  int out_failed;
  ffdl_progress meter; /* the rate and ETA of the progress lines (not drawn) */
} tool;

static void usage(FILE *to) {
  fprintf(to, "usage: s3tool [--region=R] [--virtual-host] [--part-size=N[MiB]] [--concurrency=N]\n"
              "              [--max-retries=N] [--retry-base-ms=N] [--checksum=crc32c|sha256]\n"
              "              [--ca-bundle=PEM-FILE] [--quiet] [--json]\n"
              "              ENDPOINT ACCESS SECRET COMMAND ARGS...\n"
              "commands: mb BUCKET | put BUCKET KEY [FILE|-] | get BUCKET KEY [FILE|-] |\n"
              "          upload BUCKET KEY FILE | download BUCKET KEY FILE |\n"
              "          upload-dir BUCKET PREFIX DIR | download-prefix BUCKET PREFIX DIR |\n"
              "          list BUCKET [PREFIX] | abort-uploads BUCKET [PREFIX]\n"
              "SECRET \"-\" reads $S3_SECRET_KEY; --ca-bundle defaults to $AWS_CA_BUNDLE.\n");
}

static void human(double bytes, char *out, size_t cap) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4)
    bytes /= 1024, u++;
  snprintf(out, cap, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

static void on_progress(void *ud, const ffdl_s3_progress *p) {
  tool *t = ud;
  if (t->quiet) return;
  double per_s, eta_s;
  ffdl_progress_estimate(&t->meter, p->bytes_done, p->bytes_total, &per_s, &eta_s);
  char done[32], total[32], rate[32] = "?", eta[32] = "?";
  human((double)p->bytes_done, done, sizeof done);
  human((double)p->bytes_total, total, sizeof total);
  if (per_s >= 0) human(per_s, rate, sizeof rate);
  if (eta_s >= 0) snprintf(eta, sizeof eta, "%.0fs", eta_s);
  const char *retrying = p->retrying ? " (retrying)" : "";
  if (p->bytes_total)
    fprintf(stderr, "s3tool: %s: %s / %s (%.0f%%), %llu/%llu objects, %s/s, ETA %s%s\n", t->name,
            done, total, 100.0 * (double)p->bytes_done / (double)p->bytes_total,
            (unsigned long long)p->objects_done, (unsigned long long)p->objects_total, rate, eta,
            retrying);
  else
    fprintf(stderr, "s3tool: %s: %s, %s/s (size not known yet)%s\n", t->name, done, rate, retrying);
}

static void on_done(void *ud, int status, const ffdl_s3_error *err) {
  tool *t = ud;
  t->status = status;
  if (status && err) t->err = *err;
}

static void on_object(void *ud, const char *key, uint64_t size, const char *etag) {
  tool *t = ud;
  if (t->json) {
    json_array_append_new(t->listing, json_pack("{s:s, s:I, s:s}", "key", key, "size",
                                                (json_int_t)size, "etag", etag));
    return;
  }
  printf("%llu\t%s\t%s\n", (unsigned long long)size, etag, key);
}

static void on_aborted(void *ud, const char *key, const char *upload_id) {
  (void)ud;
  printf("%s\t%s\n", upload_id, key);
}

static void on_body(void *ud, const void *data, size_t len) {
  tool *t = ud;
  if (fwrite(data, 1, len, t->out) != len) t->out_failed = 1;
}

static int parse_size(const char *s, size_t *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || !(v >= 0 && v < 1e15)) return -1; /* NaN and infinity fail too */
  if (*end == '\0' || strcmp(end, "B") == 0)
    *out = (size_t)v;
  else if (strcmp(end, "K") == 0 || strcmp(end, "KiB") == 0)
    *out = (size_t)(v * 1024);
  else if (strcmp(end, "M") == 0 || strcmp(end, "MiB") == 0)
    *out = (size_t)(v * 1024 * 1024);
  else if (strcmp(end, "G") == 0 || strcmp(end, "GiB") == 0)
    *out = (size_t)(v * 1024 * 1024 * 1024);
  else
    return -1;
  return 0;
}

/* Reads FILE ("-": stdin) into memory, at most 64 MiB + 1 bytes. */
static int slurp(const char *path, char **data, size_t *len) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f) return -1;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf) {
    if (n == cap) {
      if (cap > 64u * 1024 * 1024) break;
      char *b = realloc(buf, cap * 2);
      if (!b) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = b;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    if (r == 0) break;
    n += r;
  }
  int bad = !buf || ferror(f);
  if (f != stdin) fclose(f);
  if (bad) {
    free(buf);
    return -1;
  }
  *data = buf;
  *len = n;
  return 0;
}

static void on_closed(void *ud) {
  (void)ud;
}

/* The value of option A when it is PREFIX=VALUE, else NULL. */
static const char *option_value(const char *a, const char *prefix) {
  size_t n = strlen(prefix);
  return strncmp(a, prefix, n) == 0 ? a + n : NULL;
}

/* A whole number in [LO, HI] for option NAME; prints why not and returns -1. */
static int whole_option(const char *name, const char *value, long lo, long hi, long *out) {
  double v;
  if (ffdl_parse_number(value, (double)lo, (double)hi, 1, &v) != 0) {
    fprintf(stderr, "s3tool: %s must be a whole number from %ld to %ld, not '%s'\n", name, lo, hi,
            value);
    return -1;
  }
  *out = (long)v;
  return 0;
}

/* One option into CFG or T: 0, 1 for --help, or -1 with the reason printed. */
static int parse_option(const char *a, ffdl_s3_config *cfg, tool *t) {
  const char *v;
  long n;
  size_t size;
  if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 1;
  if (!strcmp(a, "--virtual-host")) {
    cfg->virtual_host = 1;
  } else if (!strcmp(a, "--quiet")) {
    t->quiet = 1;
  } else if (!strcmp(a, "--json")) {
    t->json = 1;
  } else if ((v = option_value(a, "--region=")) && *v) {
    cfg->region = v;
  } else if ((v = option_value(a, "--ca-bundle=")) && *v) {
    cfg->ca_bundle = v;
  } else if ((v = option_value(a, "--part-size="))) {
    if (parse_size(v, &size) != 0 || size < FFDL_S3_MIN_PART_SIZE || size > FFDL_S3_MAX_PART_SIZE) {
      fprintf(stderr,
              "s3tool: --part-size must be a size from 5MiB to 5GiB (bytes, or with K, "
              "M or G), not '%s'\n",
              v);
      return -1;
    }
    cfg->part_size = size;
  } else if ((v = option_value(a, "--concurrency="))) {
    if (whole_option("--concurrency", v, 1, FFDL_S3_MAX_CONCURRENCY, &n)) return -1;
    cfg->concurrency = (int)n;
  } else if ((v = option_value(a, "--max-retries="))) {
    if (whole_option("--max-retries", v, 0, 100, &n)) return -1;
    cfg->max_retries = n ? (int)n : -1; /* the client's 0 means its default */
  } else if ((v = option_value(a, "--retry-base-ms="))) {
    if (whole_option("--retry-base-ms", v, 1, 60000, &n)) return -1;
    cfg->retry_base_ms = (unsigned)n;
  } else if ((v = option_value(a, "--checksum="))) {
    if (ffdl_s3_checksum_parse(v, &cfg->checksum) != 0) {
      fprintf(stderr, "s3tool: --checksum must be " FFDL_S3_CHECKSUM_NAMES ", not '%s'\n", v);
      return -1;
    }
  } else {
    fprintf(stderr, "s3tool: unknown option %s\n", a);
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  ffdl_log_init();
  ffdl_s3_config cfg = {0};
  tool t = {.out = stdout};
  ffdl_progress_init(&t.meter, "s3tool");
  int i = 1;
  for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
    int rc = parse_option(argv[i], &cfg, &t);
    if (rc == 1) {
      usage(stdout);
      return 0;
    }
    if (rc != 0) {
      usage(stderr);
      return 2;
    }
  }
  if (argc - i < 5) {
    usage(stderr);
    return 2;
  }
  cfg.endpoint = argv[i];
  cfg.access_key = argv[i + 1];
  cfg.secret_key = argv[i + 2];
  if (strcmp(cfg.secret_key, "-") == 0) {
    cfg.secret_key = getenv("S3_SECRET_KEY");
    if (!cfg.secret_key) {
      fprintf(stderr, "s3tool: SECRET is \"-\" but S3_SECRET_KEY is not set\n");
      return 2;
    }
  }
  const char *cmd = argv[i + 3];
  char **a = argv + i + 4;
  int n = argc - i - 4;
  t.name = cmd;
  if (n > 0 && !ffdl_s3_bucket_ok(a[0], !cfg.virtual_host)) { /* every command's first */
    fprintf(stderr, "s3tool: %s: the bucket name '%s' is not one: %s\n", cmd, a[0],
            ffdl_s3_bucket_rule(!cfg.virtual_host));
    return 2;
  }

  uv_loop_t loop;
  uv_loop_init(&loop);
  ffdl_s3 *s3;
  int rc = ffdl_s3_new(&loop, &cfg, &s3);
  if (rc) {
    const char *problem = ffdl_s3_endpoint_problem(cfg.endpoint);
    if (problem)
      fprintf(stderr, "s3tool: the endpoint %s\n", problem);
    else
      fprintf(stderr, "s3tool: bad client settings (part size at least 5 MiB): %s\n",
              ffdl_strerror(rc));
    uv_loop_close(&loop);
    return 2;
  }
  ffdl_s3_progress_cb progress = t.quiet ? NULL : on_progress;
  char *data = NULL;
  size_t len = 0;
  FILE *out_file = NULL;
  rc = FFDL_EUSAGE;
  if (strcmp(cmd, "mb") == 0 && n == 1) {
    rc = ffdl_s3_create_bucket(s3, a[0], on_done, &t);
  } else if (strcmp(cmd, "put") == 0 && (n == 2 || n == 3)) {
    if (slurp(n == 3 ? a[2] : "-", &data, &len) != 0) {
      fprintf(stderr, "s3tool: cannot read %s\n", n == 3 ? a[2] : "stdin");
      return 1;
    }
    rc = ffdl_s3_put_buffer(s3, a[0], a[1], data, len, on_done, &t);
  } else if (strcmp(cmd, "get") == 0 && (n == 2 || n == 3)) {
    if (n == 3 && strcmp(a[2], "-") != 0) {
      out_file = fopen(a[2], "wb");
      if (!out_file) {
        fprintf(stderr, "s3tool: cannot write %s\n", a[2]);
        return 1;
      }
      t.out = out_file;
    }
    rc = ffdl_s3_get_buffer(s3, a[0], a[1], on_body, on_done, &t);
  } else if (strcmp(cmd, "upload") == 0 && n == 3) {
    rc = ffdl_s3_upload_file(s3, a[0], a[1], a[2], progress, on_done, &t);
  } else if (strcmp(cmd, "download") == 0 && n == 3) {
    rc = ffdl_s3_download_file(s3, a[0], a[1], a[2], progress, on_done, &t);
  } else if (strcmp(cmd, "upload-dir") == 0 && n == 3) {
    rc = ffdl_s3_upload_dir(s3, a[0], a[1], a[2], progress, on_done, &t);
  } else if (strcmp(cmd, "download-prefix") == 0 && n == 3) {
    rc = ffdl_s3_download_prefix(s3, a[0], a[1], a[2], progress, on_done, &t);
  } else if (strcmp(cmd, "list") == 0 && (n == 1 || n == 2)) {
    if (t.json) t.listing = json_array();
    rc = ffdl_s3_list(s3, a[0], n == 2 ? a[1] : "", on_object, on_done, &t);
  } else if (strcmp(cmd, "abort-uploads") == 0 && (n == 1 || n == 2)) {
    rc = ffdl_s3_abort_uploads(s3, a[0], n == 2 ? a[1] : "", on_aborted, on_done, &t);
  }
  if (rc != 0) { /* the operation did not start */
    if (rc == FFDL_EUSAGE)
      usage(stderr);
    else
      fprintf(stderr, "s3tool: %s: %s (check the key)\n", cmd, ffdl_strerror(rc));
    ffdl_s3_close(s3, on_closed, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(data);
    if (out_file) fclose(out_file);
    json_decref(t.listing);
    return rc == FFDL_EUSAGE ? 2 : 1;
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  ffdl_s3_close(s3, on_closed, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  free(data);
  if (out_file && fclose(out_file) != 0) t.out_failed = 1;
  if (t.listing) {
    if (t.status == 0) {
      json_dumpf(t.listing, stdout, JSON_INDENT(0) | JSON_COMPACT);
      putchar('\n');
    }
    json_decref(t.listing);
  }
  if (t.status != 0) {
    char text[1024];
    if (t.err.code[0])
      ffdl_s3_error_text(&t.err, text, sizeof text);
    else
      snprintf(text, sizeof text, "%s", ffdl_strerror(t.status));
    fprintf(stderr, "s3tool: %s failed: %s\n", cmd, text);
    return 1;
  }
  if (t.out_failed) {
    fprintf(stderr, "s3tool: %s: cannot write the output\n", cmd);
    return 1;
  }
  return 0;
}
