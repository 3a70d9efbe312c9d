/*
 * ffdl_server.c: `ffdl-server`: the orchestrator as a long-running,
 * multi-user service behind FfDL's REST API.
 *   ffdl-server --listen 127.0.0.1:8080 --data DIR [--config FILE] [--policies DIR]
 * Owns: start-up (first admin), configuration, signals, the observer that
 * feeds the API. Must not: handle requests itself (src/api does).
 */
#include "api/api.h"
#include "api/http.h"
#include "app/paths.h"
#include "app/runtime.h"
#include "core/error.h"
#include "core/str.h"
#include "core/log.h"
#include "policy/limits.h"
#include "policy/spec.h"
#include "store/s3.h"
#include "store/s3_util.h"

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef struct {
  const char *listen, *data, *config, *policies;
  size_t max_upload;
  uint64_t max_unzipped;
  double creates_per_minute;
  int halt_on_shutdown;              /* 0: leave learners running for the next start */
  json_t *default_store;             /* from the s3_* settings, or NULL */
  ffdl_sandbox_limits policy_limits; /* zero fields: the built-in limits */
  unsigned policy_debounce_ms;       /* quiet time after a policy file change */
} options;

typedef struct {
  ffdl_runtime rt;
  ffdl_api *api;
  ffdl_http *http;
  ffdl_users *users;
  ffdl_policies *policies;
  uv_signal_t sigint, sigterm, sighup;
  uv_timer_t drain;
  int stopping, halt_on_shutdown;
} server;

static void usage(FILE *out) {
  fputs("usage: ffdl-server --listen HOST:PORT --data DIR [--config FILE] [--policies DIR]\n"
        "config (YAML): listen, data, policies, max_upload_mb, max_unzipped_mb,\n"
        "               creates_per_minute, on_shutdown (leave | halt), policy_debounce_ms,\n"
        "               s3_url, s3_access_key, s3_secret_key, s3_region, s3_results_bucket,\n"
        "               s3_checksum (crc32c | sha256), s3_part_size_mb, s3_concurrency,\n"
        "               s3_addressing_style (path | virtual),\n"
        "               policy_limits: {memory_mb: N, deadline_ms: {default|HOOK: ms}}\n",
        out);
}

/* The default store's connection, made on the first s3_* setting. */
static json_t *default_connection(options *o) {
  if (!o->default_store)
    o->default_store =
        json_pack("{s:s,s:s,s:{},s:{},s:b}", "id", "internal", "type", "s3_datastore", "connection",
                  "training_results", FFDL_SPEC_SERVER_STORE, 1);
  return json_object_get(o->default_store, "connection");
}

/* s3_url, s3_access_key, s3_secret_key, s3_region, s3_checksum and
 * s3_addressing_style (checked by the caller), s3_results_bucket: the
 * default results store, in the shape of a manifest's data store. */
static int set_default_store(options *o, const char *key, const char *val) {
  static const char *const keys[][2] = {
      {"url", "auth_url"},  {"access_key", "user_name"}, {"secret_key", "password"},
      {"region", "region"}, {"checksum", "checksum"},    {"addressing_style", "addressing_style"}};
  json_t *conn = default_connection(o);
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
    if (!strcmp(key, keys[i][0])) {
      json_object_set_new(conn, keys[i][1], json_string(val));
      return 0;
    }
  if (!strcmp(key, "results_bucket")) {
    json_object_set_new(json_object_get(o->default_store, "training_results"), "container",
                        json_string(val));
    return 0;
  }
  return -1;
}

/* The YAML node N as JSON (caller decrefs): plain scalars that read as
 * numbers become numbers, other scalars strings. POS gets "line:col" of the
 * key of every mapping entry, by its path below PATH ("a.b"). */
static json_t *yaml_json(yaml_document_t *doc, yaml_node_t *n, const char *path, json_t *pos) {
  char sub[512];
  if (n->type == YAML_MAPPING_NODE) {
    json_t *obj = json_object();
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
      yaml_node_t *k = yaml_document_get_node(doc, p->key),
                  *v = yaml_document_get_node(doc, p->value);
      const char *key = k->type == YAML_SCALAR_NODE ? (const char *)k->data.scalar.value : "?";
      snprintf(sub, sizeof sub, "%s.%s", path, key);
      json_object_set_new(
          pos, sub, json_pack("[i,i]", (int)k->start_mark.line + 1, (int)k->start_mark.column + 1));
      json_object_set_new(obj, key, yaml_json(doc, v, sub, pos));
    }
    return obj;
  }
  if (n->type == YAML_SEQUENCE_NODE) {
    json_t *arr = json_array();
    int i = 0;
    for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top;
         it++, i++) {
      snprintf(sub, sizeof sub, "%s[%d]", path, i);
      json_array_append_new(arr, yaml_json(doc, yaml_document_get_node(doc, *it), sub, pos));
    }
    return arr;
  }
  const char *text = (const char *)n->data.scalar.value;
  if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && *text) {
    char *end;
    long long i = strtoll(text, &end, 10);
    if (!*end) return json_integer(i);
    double d = strtod(text, &end);
    if (!*end && isfinite(d)) return json_real(d);
  }
  return json_string(text);
}

/* policy_limits: {memory_mb, deadline_ms: {hook: ms}}; errors name the
 * file, the line and the field. */
static int read_policy_limits(const char *file, yaml_document_t *doc, yaml_node_t *k,
                              yaml_node_t *v, options *o) {
  json_t *pos = json_object();
  json_t *config = yaml_json(doc, v, "policy_limits", pos);
  char *field = NULL, *err = NULL;
  int rc = ffdl_policy_limits_from_json(config, "policy_limits", &o->policy_limits, &field, &err);
  if (rc != FFDL_OK) {
    json_t *at = json_object_get(pos, field ? field : "");
    int line = at ? (int)json_integer_value(json_array_get(at, 0)) : (int)k->start_mark.line + 1;
    int col = at ? (int)json_integer_value(json_array_get(at, 1)) : (int)k->start_mark.column + 1;
    fprintf(stderr, "ffdl-server: %s:%d:%d: %s: %s\n", file, line, col,
            field ? field : "policy_limits", err ? err : ffdl_strerror(rc));
  }
  free(field);
  free(err);
  json_decref(config);
  json_decref(pos);
  return rc == FFDL_OK ? 0 : -1;
}

/* "FILE:LINE:COL: KEY: MSG" at node N. */
static void config_error(const char *path, const yaml_node_t *n, const char *key, const char *msg) {
  fprintf(stderr, "ffdl-server: %s:%d:%d: %s: %s\n", path, (int)n->start_mark.line + 1,
          (int)n->start_mark.column + 1, key, msg);
}

/* "KEY: EXPECT, got "VAL"" at the value; -1. */
static int bad_value(const char *path, const yaml_node_t *v, const char *key, const char *expect,
                     const char *val) {
  char msg[300];
  snprintf(msg, sizeof msg, "%s, got \"%s\"", expect, val);
  config_error(path, v, key, msg);
  return -1;
}

static void set_max_upload(options *o, double n) {
  o->max_upload = (size_t)n << 20;
}
static void set_max_unzipped(options *o, double n) {
  o->max_unzipped = (uint64_t)n << 20;
}
static void set_creates_per_minute(options *o, double n) {
  o->creates_per_minute = n;
}
static void set_policy_debounce(options *o, double n) {
  o->policy_debounce_ms = (unsigned)n;
}
/* as a manifest's connection has them after the schema (lua/ffdl/manifest.lua) */
static void set_s3_part_size(options *o, double n) {
  json_t *conn = default_connection(o);
  json_object_set_new(conn, "part_size", json_sprintf("%.0fMiB", n));
  json_object_set_new(conn, "part_size_bytes", json_integer((json_int_t)n << 20));
}
static void set_s3_concurrency(options *o, double n) {
  json_object_set_new(default_connection(o), "concurrency", json_integer((json_int_t)n));
}

/* The numeric settings: what each takes, and where it goes. 1 when KEY is
 * not one of them. */
static int read_number_setting(const char *path, const yaml_node_t *v, const char *key,
                               const char *val, options *o) {
  static const struct {
    const char *key;
    double lo, hi;
    int whole;
    const char *expect;
    void (*set)(options *, double);
  } numbers[] = {
      {"max_upload_mb", 1, 1 << 20, 1, "must be a whole number of MiB, 1..1048576", set_max_upload},
      {"max_unzipped_mb", 1, 1 << 24, 1, "must be a whole number of MiB, 1..16777216",
       set_max_unzipped},
      {"creates_per_minute", 0, 1e9, 0, "must be a number >= 0 (0: no limit)",
       set_creates_per_minute},
      {"policy_debounce_ms", 0, 60000, 1, "must be a whole number of ms, 0..60000",
       set_policy_debounce},
      {"s3_part_size_mb", 5, 5120, 1, "must be a whole number of MiB, 5..5120 (S3's bounds)",
       set_s3_part_size},
      {"s3_concurrency", 1, FFDL_S3_MAX_CONCURRENCY, 1, "must be a whole number, 1..256",
       set_s3_concurrency},
  };
  for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++) {
    if (strcmp(key, numbers[i].key) != 0) continue;
    double n;
    if (ffdl_parse_number(val, numbers[i].lo, numbers[i].hi, numbers[i].whole, &n) != 0)
      return bad_value(path, v, key, numbers[i].expect, val);
    numbers[i].set(o, n);
    return 0;
  }
  return 1;
}

/* One KEY: VALUE of the config (a scalar); 0, or -1 after saying why. */
static int read_setting(const char *path, const yaml_node_t *k, const yaml_node_t *v,
                        const char *key, const char *val, options *o) {
  int checksum, virtual_host, rc = read_number_setting(path, v, key, val, o);
  if (rc <= 0) return rc;
  if (!strcmp(key, "listen")) {
    if (!o->listen) o->listen = strdup(val);
  } else if (!strcmp(key, "data")) {
    if (!o->data) o->data = strdup(val);
  } else if (!strcmp(key, "policies")) {
    if (!o->policies) o->policies = strdup(val);
  } else if (!strcmp(key, "on_shutdown")) {
    if (strcmp(val, "halt") != 0 && strcmp(val, "leave") != 0) {
      config_error(path, v, key, "must be leave (learners go on for the next start) or halt");
      return -1;
    }
    o->halt_on_shutdown = !strcmp(val, "halt");
  } else if (!strcmp(key, "s3_url") && ffdl_s3_endpoint_problem(val)) {
    return bad_value(path, v, key, ffdl_s3_endpoint_problem(val), val);
  } else if (!strcmp(key, "s3_checksum") && ffdl_s3_checksum_parse(val, &checksum) != 0) {
    return bad_value(path, v, key, "must be " FFDL_S3_CHECKSUM_NAMES, val);
  } else if (!strcmp(key, "s3_addressing_style") &&
             ffdl_s3_addressing_parse(val, &virtual_host) != 0) {
    return bad_value(path, v, key, "must be " FFDL_S3_ADDRESSING_NAMES, val);
  } else if (strncmp(key, "s3_", 3) != 0 || set_default_store(o, key + 3, val) != 0) {
    config_error(path, k, key, "unknown setting");
    return -1;
  }
  return 0;
}

/* Whether the default store's results bucket is a name its client takes
 * (stricter when the bucket goes in the host name); says why not. */
static int default_bucket_ok(const options *o) {
  json_t *conn = json_object_get(o->default_store, "connection");
  const char *bucket = json_string_value(
      json_object_get(json_object_get(o->default_store, "training_results"), "container"));
  int virtual_host = 0; /* the setting was checked as it was read */
  ffdl_s3_addressing_parse(json_string_value(json_object_get(conn, "addressing_style")),
                           &virtual_host);
  if (bucket && ffdl_s3_bucket_ok(bucket, !virtual_host)) return 1;
  fprintf(stderr, "ffdl-server: %s: s3_results_bucket: \"%s\" is not an S3 bucket name (%s%s)\n",
          o->config, bucket ? bucket : "", ffdl_s3_bucket_rule(!virtual_host),
          virtual_host ? ", with s3_addressing_style: virtual" : "");
  return 0;
}

/* Reads the flat YAML config; command-line flags win. */
static int read_config(const char *path, options *o) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "ffdl-server: %s: cannot open the config file\n", path);
    return -1;
  }
  yaml_parser_t parser;
  yaml_document_t doc;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_file(&parser, f);
  int ok = yaml_parser_load(&parser, &doc);
  if (!ok) {
    fprintf(stderr, "ffdl-server: %s:%d:%d: YAML syntax error: %s\n", path,
            (int)parser.problem_mark.line + 1, (int)parser.problem_mark.column + 1,
            parser.problem ? parser.problem : "?");
  }
  yaml_node_t *root = ok ? yaml_document_get_root_node(&doc) : NULL;
  int rc = ok ? 0 : -1;
  if (root && root->type != YAML_MAPPING_NODE) { /* an empty file has no root: no settings */
    config_error(path, root, "(file)", "must be a mapping of settings (key: value)");
    rc = -1;
  }
  for (yaml_node_pair_t *p = rc == 0 && root ? root->data.mapping.pairs.start : NULL;
       p && p < root->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(&doc, p->key),
                *v = yaml_document_get_node(&doc, p->value);
    const char *key = k->type == YAML_SCALAR_NODE ? (const char *)k->data.scalar.value : "?";
    if (!strcmp(key, "policy_limits")) {
      if (read_policy_limits(path, &doc, k, v, o) != 0) rc = -1;
    } else if (v->type != YAML_SCALAR_NODE) {
      config_error(path, v, key, "must be a single value");
      rc = -1;
    } else if (read_setting(path, k, v, key, (const char *)v->data.scalar.value, o) != 0) {
      rc = -1;
    }
  }
  if (ok) yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  fclose(f);
  return rc;
}

static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  o->max_upload = 256u << 20;
  o->max_unzipped = 1024u << 20;
  o->creates_per_minute = 120;
  o->policy_debounce_ms = 200;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--listen") && i + 1 < argc)
      o->listen = argv[++i];
    else if (!strcmp(argv[i], "--data") && i + 1 < argc)
      o->data = argv[++i];
    else if (!strcmp(argv[i], "--config") && i + 1 < argc)
      o->config = argv[++i];
    else if (!strcmp(argv[i], "--policies") && i + 1 < argc)
      o->policies = argv[++i];
    else if (!strcmp(argv[i], "--help"))
      return usage(stdout), 1;
    else {
      fprintf(stderr, "ffdl-server: unknown argument %s\n", argv[i]);
      return usage(stderr), -1;
    }
  }
  if (o->config && read_config(o->config, o) != 0) return -1;
  json_t *conn = json_object_get(o->default_store, "connection");
  if (o->default_store &&
      (!json_object_get(conn, "auth_url") || !json_object_get(conn, "user_name") ||
       !json_object_get(conn, "password") ||
       !json_object_get(json_object_get(o->default_store, "training_results"), "container"))) {
    fprintf(stderr,
            "ffdl-server: %s: the default S3 store needs s3_url, s3_access_key, "
            "s3_secret_key and s3_results_bucket\n",
            o->config);
    return -1;
  }
  if (o->default_store && !default_bucket_ok(o)) return -1;
  if (!o->listen) o->listen = "127.0.0.1:8080";
  if (!o->data) o->data = ".ffdl-server";
  return 0;
}

static void on_transition(void *ud, const char *id, const char *status, const char *reason,
                          const char *code) {
  (void)ud;
  ffdl_log(FFDL_LOG_INFO, "%s: %s%s%s%s%.*s", id, status, code ? " " : "", code ? code : "",
           reason ? ": " : "", reason ? (int)strcspn(reason, "\n") : 0, reason ? reason : "");
}
static void on_line(void *ud, const char *id, int learner, const char *line, size_t len) {
  ffdl_api_on_line(((server *)ud)->api, id, learner, line, len);
}
static void on_end(void *ud, const char *id, const char *status) {
  ffdl_api_on_end(((server *)ud)->api, id, status);
}
static const ffdl_orch_observer observer = {on_transition, NULL, on_line, NULL, on_end, NULL};

static void on_swap(void *ud, ffdl_generation *now, ffdl_generation *old) {
  (void)old;
  server *s = ud;
  ffdl_orch_set_generation(s->rt.orch, now);
}

static void on_sighup(uv_signal_t *h, int signum) {
  (void)signum;
  server *s = h->data;
  ffdl_log(FFDL_LOG_INFO, "SIGHUP: reloading the policies");
  /* the build runs on the thread pool; it logs its own outcome */
  ffdl_policies_reload(s->policies, NULL, NULL);
}

/* Stops the loop once every halted job has ended and been recorded. */
static void check_drained(uv_timer_t *t) {
  server *s = t->data;
  if (ffdl_orch_active(s->rt.orch) == 0) uv_stop(t->loop);
}

static void on_signal(uv_signal_t *h, int signum) {
  server *s = h->data;
  if (s->stopping++) return;
  ffdl_http_stop(s->http);
  if (!s->halt_on_shutdown) {
    /* every state is in the store already; the next start reattaches */
    ffdl_log(FFDL_LOG_WARN, "%s: stopping; %zu job(s) keep running for the next start",
             signum == SIGINT ? "interrupted" : "terminated", ffdl_orch_active(s->rt.orch));
    ffdl_backend_abandon(s->rt.backend);
    s->rt.backend = NULL;
    uv_stop(h->loop);
    return;
  }
  ffdl_log(FFDL_LOG_WARN, "%s: no new requests; halting running jobs",
           signum == SIGINT ? "interrupted" : "terminated");
  ffdl_orch_halt_all(s->rt.orch, "the server is shutting down");
  uv_timer_start(&s->drain, check_drained, 0, 50);
}

/* The first start creates an admin: FFDL_ADMIN_TOKEN, or a printed token. */
static int bootstrap_admin(ffdl_users *users) {
  if (ffdl_users_count(users) > 0) return 0;
  const char *given = getenv("FFDL_ADMIN_TOKEN");
  char token[80];
  if (ffdl_users_add(users, "admin", 1, given && *given ? given : NULL, token) != FFDL_OK) {
    fprintf(stderr, "ffdl-server: cannot create the admin user\n");
    return -1;
  }
  if (!(given && *given)) printf("admin token (shown once, only its hash is stored): %s\n", token);
  fflush(stdout);
  return 0;
}

static int split_listen(const char *listen, char *host, size_t cap, int *port) {
  const char *colon = strrchr(listen, ':');
  if (!colon) return -1;
  snprintf(host, cap, "%.*s", (int)(colon - listen), listen);
  double n;
  if (ffdl_parse_number(colon + 1, 0, 65535, 1, &n) != 0) return -1; /* 0: any free port */
  *port = (int)n;
  return 0;
}

int main(int argc, char **argv) {
  ffdl_log_init();
  if (!getenv("FFDL_LOG")) ffdl_log_set_level(FFDL_LOG_INFO);
  signal(SIGPIPE, SIG_IGN);
  static options o; /* lives as long as the process: the server keeps what it points to */
  int rc = parse_args(argc, argv, &o);
  if (rc != 0) return rc > 0 ? 0 : 2;
  char host[256];
  int port;
  if (split_listen(o.listen, host, sizeof host, &port) != 0) {
    fprintf(stderr, "ffdl-server: --listen wants HOST:PORT, got %s\n", o.listen);
    return 2;
  }
  setenv("FFDL_HOME", o.data, 1);
  char results[4096];
  snprintf(results, sizeof results, "%s/results", o.data);
  setenv("FFDL_RESULTS", results, 1);

  server s = {.halt_on_shutdown = o.halt_on_shutdown};
  char *err = NULL;
  /* policy_limits hold for every sandbox of the process, the runtime's
   * first generation included, and for every reload */
  ffdl_sandbox_set_defaults(&o.policy_limits);
  if (ffdl_runtime_open(&s.rt, o.policies, &observer, &s, &err) != 0) {
    fprintf(stderr, "ffdl-server: %s\n", err ? err : "cannot start");
    return 2;
  }
  /* the live generation is checked (hooks, shapes, tests) and hot-reloaded */
  ffdl_generation_opts gopts = {.policies_dir =
                                    o.policies ? o.policies : ffdl_paths_default_policies(),
                                .lua_dir = ffdl_paths_lua_dir(),
                                .limits = o.policy_limits};
  if (ffdl_policies_open(s.rt.loop, &gopts, on_swap, &s, &s.policies, &err) != 0) {
    fprintf(stderr, "ffdl-server: the policies in %s are rejected:\n%s\n", gopts.policies_dir, err);
    return 2;
  }
  ffdl_orch_set_generation(s.rt.orch, ffdl_policies_active(s.policies));
  ffdl_generation_free(s.rt.gen);
  s.rt.gen = NULL;
  ffdl_policies_watch(s.policies, o.policy_debounce_ms);
  char db[4200];
  snprintf(db, sizeof db, "%s/ffdl.db", s.rt.home);
  if (ffdl_users_open(db, &s.users, &err) != 0 || bootstrap_admin(s.users) != 0) {
    fprintf(stderr, "ffdl-server: %s\n", err ? err : "cannot open the user table");
    return 2;
  }
  char openapi[4200];
  snprintf(openapi, sizeof openapi, "%s/docs/openapi.json", ffdl_paths_root());
  ffdl_api_opts ao = {.orch = s.rt.orch,
                      .store = s.rt.store,
                      .users = s.users,
                      .policies = s.policies,
                      .home = s.rt.home,
                      .results = s.rt.results,
                      .openapi = openapi,
                      .max_unzipped = o.max_unzipped,
                      .creates_per_minute = o.creates_per_minute,
                      .default_store = o.default_store};
  ffdl_api_new(&ao, &s.api);
  size_t recovered = 0;
  ffdl_orch_recover(s.rt.orch, &recovered);
  if (recovered)
    ffdl_log(FFDL_LOG_INFO, "took over %zu unfinished job(s) from the store", recovered);
  if (ffdl_http_listen(s.rt.loop, host, port, o.max_upload, ffdl_api_handle, s.api, &s.http,
                       &err) != 0) {
    fprintf(stderr, "ffdl-server: %s\n", err);
    return 2;
  }
  uv_signal_init(s.rt.loop, &s.sigint);
  uv_signal_init(s.rt.loop, &s.sigterm);
  s.sigint.data = s.sigterm.data = &s;
  uv_signal_start(&s.sigint, on_signal, SIGINT);
  uv_signal_start(&s.sigterm, on_signal, SIGTERM);
  uv_signal_init(s.rt.loop, &s.sighup);
  s.sighup.data = &s;
  uv_signal_start(&s.sighup, on_sighup, SIGHUP);
  uv_timer_init(s.rt.loop, &s.drain);
  s.drain.data = &s;
  printf("ffdl-server listening on http://%s:%d (data in %s)\n", host, ffdl_http_port(s.http),
         s.rt.home);
  fflush(stdout);
  /* after a stop, the loop runs until halted jobs have ended and
   * connections have closed */
  uv_run(s.rt.loop, UV_RUN_DEFAULT);
  ffdl_log(FFDL_LOG_INFO, "stopped");
  ffdl_users_close(s.users);
  _exit(0); /* h2o's context has no teardown that is safe with live connections */
}
