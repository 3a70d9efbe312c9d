/*
 * script.c: the job-script side of the `ffdl` Lua module.
 * A job script is trusted user code in its own full Lua state (not the
 * policy sandbox). It runs as a coroutine on the loop: calls that wait
 * yield, and orchestrator events resume them through lua/script/ffdl.lua.
 * Owns: ffdl.core (submit, status, halt, results, events), the script's
 * life and exit status. Must not: block the loop or touch policy states.
 */
#include "app/script.h"
#include "app/paths.h"
#include "app/remote.h"
#include "core/error.h"
#include "policy/ljson.h"
#include "policy/spec.h"
#include "store/localstore.h"
#include "store/s3.h"

#include <lauxlib.h>
#include <lualib.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  ffdl_runtime *rt;
  ffdl_remote *remote; /* ffdl-run --server: jobs go to the server */
  ffdl_ui *ui;
  lua_State *L;
  int dispatch_ref; /* the Lua function events go to */
  int failed;       /* the script raised: exit 2 */
  int interrupted;
  int exit_code; /* set by os.exit() */
  uv_signal_t sigint, sigterm;
} script;

static const char SCRIPT_KEY = 's';

static void halt_everything(script *s, const char *why);

static script *script_of(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &SCRIPT_KEY);
  script *s = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return s;
}

/* ---- events from the orchestrator into Lua --------------------------- */

/* Calls dispatch(event) with the table at the top.  [-1, +0] */
static void dispatch(script *s) {
  lua_State *L = s->L;
  if (s->dispatch_ref == LUA_NOREF) {
    lua_pop(L, 1);
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->dispatch_ref);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "ffdl-run: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    s->failed = 1;
    halt_everything(s, "the job script failed");
  }
}

static void push_event(lua_State *L, const char *type, const char *id) {
  lua_createtable(L, 0, 6);
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  lua_pushstring(L, id);
  lua_setfield(L, -2, "id");
}

static void ev_transition(void *ud, const char *id, const char *status, const char *reason,
                          const char *code) {
  script *s = ud;
  ffdl_ui_transition(s->ui, id, status, reason, code);
  push_event(s->L, "transition", id);
  lua_pushstring(s->L, status);
  lua_setfield(s->L, -2, "status");
  dispatch(s);
}

static void ev_waiting(void *ud, const char *id, const char *reason) {
  script *s = ud;
  ffdl_ui_waiting(s->ui, id, reason);
}

static void ev_line(void *ud, const char *id, int learner, const char *line, size_t len) {
  script *s = ud;
  ffdl_ui_line(s->ui, id, learner, line, len);
  push_event(s->L, "line", id);
  lua_pushinteger(s->L, learner);
  lua_setfield(s->L, -2, "learner");
  lua_pushlstring(s->L, line, len);
  lua_setfield(s->L, -2, "line");
  dispatch(s);
}

static void ev_metric(void *ud, const char *id, const json_t *record) {
  script *s = ud;
  ffdl_ui_metric(s->ui, id, record);
  push_event(s->L, "metric", id);
  ffdl_ljson_push(s->L, record);
  lua_setfield(s->L, -2, "record");
  dispatch(s);
}

static void ev_end(void *ud, const char *id, const char *status) {
  script *s = ud;
  push_event(s->L, "end", id);
  lua_pushstring(s->L, status);
  lua_setfield(s->L, -2, "status");
  dispatch(s);
}

static void ev_progress(void *ud, const char *id, const char *what, uint64_t done, uint64_t total,
                        int final) {
  script *s = ud;
  ffdl_ui_progress(s->ui, id, what, done, total, final);
}

static const ffdl_orch_observer script_observer = {ev_transition, ev_waiting, ev_line,
                                                   ev_metric,     ev_end,     ev_progress};

/* ---- ffdl.core ------------------------------------------------------- */

/* Applies script options over the manifest's spec. */
static void apply_options(lua_State *L, int opts, json_t *spec) {
  static const char *const copied[] = {"name", "description", "user", "team", NULL};
  for (const char *const *k = copied; *k; k++)
    if (lua_getfield(L, opts, *k) == LUA_TSTRING)
      json_object_set_new(spec, *k, json_string(lua_tostring(L, -1)));
    else
      lua_pop(L, 0);
  lua_settop(L, opts);
  if (lua_getfield(L, opts, "learners") == LUA_TNUMBER)
    json_object_set_new(spec, "learners", json_integer(lua_tointeger(L, -1)));
  lua_settop(L, opts);
  if (lua_getfield(L, opts, "args") == LUA_TTABLE) {
    const char *err;
    json_t *args = ffdl_ljson_from_lua(L, -1, &err);
    if (json_is_object(args))
      json_object_set_new(spec, "args", args);
    else
      json_decref(args);
  }
  lua_settop(L, opts);
}

/* core.submit{manifest=, model=, args=, name=, learners=} -> id | nil, err */
static int l_submit(lua_State *L) {
  script *s = script_of(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "manifest");
  const char *manifest = luaL_optstring(L, -1, NULL);
  if (!manifest) return luaL_error(L, "ffdl.train: manifest = PATH is required");
  lua_getfield(L, 1, "model");
  const char *model = lua_tostring(L, -1);
  ffdl_diags diags = {0};
  json_t *spec = NULL;
  int rc = ffdl_spec_check_file(s->rt->gen, manifest, &diags, &spec);
  ffdl_diags_print(&diags, manifest, stderr);
  size_t errors = ffdl_diags_errors(&diags);
  ffdl_diags_free(&diags);
  if (rc != 0 || !spec) {
    json_decref(spec);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %d problem(s), see above", manifest, (int)errors);
    return 2;
  }
  lua_settop(L, 2);
  apply_options(L, 1, spec);
  if (!model) model = json_string_value(json_object_get(spec, "model"));
  char *manifest_dir = strdup(manifest);
  if (!model) model = dirname(manifest_dir); /* the code sits beside the manifest */
  char id[64], *err = NULL;
  rc = s->remote ? ffdl_remote_submit_spec(s->remote, spec, model, id, &err)
                 : ffdl_orch_submit(s->rt->orch, spec, model, id, &err);
  json_decref(spec);
  free(manifest_dir);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err ? err : ffdl_strerror(rc));
    free(err);
    return 2;
  }
  lua_pushstring(L, id);
  return 1;
}

static int l_status(lua_State *L) {
  script *s = script_of(L);
  const char *id = luaL_checkstring(L, 1);
  const char *status =
      s->remote ? ffdl_remote_status(s->remote, id) : ffdl_orch_status(s->rt->orch, id);
  lua_pushstring(L, status);
  return 1;
}

static int l_halt(lua_State *L) {
  script *s = script_of(L);
  if (s->remote)
    ffdl_remote_halt(s->remote, luaL_checkstring(L, 1));
  else
    ffdl_orch_halt(s->rt->orch, luaL_checkstring(L, 1), "halted by the job script");
  return 0;
}

static void halt_everything(script *s, const char *why) {
  if (s->remote)
    ffdl_remote_halt_all(s->remote);
  else
    ffdl_orch_halt_all(s->rt->orch, why);
}

/* core.download(id, dir): the results into DIR, local or from the server. */
static int l_download(lua_State *L) {
  script *s = script_of(L);
  const char *id = luaL_checkstring(L, 1), *dir = luaL_checkstring(L, 2);
  char *err = NULL;
  int rc = s->remote
               ? ffdl_remote_download(s->remote, id, dir, &err)
               : ffdl_localstore_copy_tree(ffdl_orch_results_dir(s->rt->orch, id), dir, NULL, &err);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err ? err : "download failed");
    free(err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_results_dir(lua_State *L) {
  script *s = script_of(L);
  if (s->remote) return 0; /* on the server: use job:download() */
  lua_pushstring(L, ffdl_orch_results_dir(s->rt->orch, luaL_checkstring(L, 1)));
  return 1;
}

/* core.job(id): the job as the store holds it, plus job.json's final metrics. */
static int l_job(lua_State *L) {
  script *s = script_of(L);
  const char *id = luaL_checkstring(L, 1);
  if (s->remote) {
    json_t *doc = ffdl_remote_job(s->remote, id);
    ffdl_ljson_push(L, doc);
    json_decref(doc);
    return 1;
  }
  json_t *doc = ffdl_jobstore_get(s->rt->store, id);
  if (!doc) return 0;
  const char *dir = ffdl_orch_results_dir(s->rt->orch, id);
  char path[4200];
  snprintf(path, sizeof path, "%s/job.json", dir ? dir : "");
  json_t *written = json_load_file(path, 0, NULL);
  json_t *final = json_object_get(written, "final_metrics");
  if (final) json_object_set(doc, "final_metrics", final);
  json_object_del(doc, "spec"); /* secrets stay out of scripts */
  ffdl_ljson_push(L, doc);
  json_decref(written);
  json_decref(doc);
  return 1;
}

static int l_copy_tree(lua_State *L) {
  const char *src = luaL_checkstring(L, 1), *dst = luaL_checkstring(L, 2);
  char *err = NULL;
  if (ffdl_localstore_copy_tree(src, dst, NULL, &err) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err ? err : "copy failed");
    free(err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int l_set_dispatcher(lua_State *L) {
  script *s = script_of(L);
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, s->dispatch_ref);
  s->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* core.fail(message): an error inside a coroutine; the run exits 2. */
static int l_fail(lua_State *L) {
  script *s = script_of(L);
  fprintf(stderr, "ffdl-run: %s\n", luaL_checkstring(L, 1));
  if (!s->failed) halt_everything(s, "the job script failed");
  s->failed = 1;
  return 0;
}

/* os.exit(code) in a script: stop the jobs, then exit with CODE. */
static int l_exit(lua_State *L) {
  script *s = script_of(L);
  s->exit_code =
      lua_isboolean(L, 1) ? (lua_toboolean(L, 1) ? 0 : 1) : (int)luaL_optinteger(L, 1, 0);
  halt_everything(s, "the job script called os.exit");
  return lua_yield(L, 0); /* this coroutine never resumes */
}

/* core.now(): wall-clock seconds with sub-microsecond digits. */
static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

/* ---- S3 from job scripts: each call yields until its done callback ---- */

typedef struct {
  script *s;
  int token;
  ffdl_s3 *client;
  char *body; /* get */
  size_t len;
  json_t *objects; /* list */
} s3_call;

static void s3_closed(void *ud) {
  s3_call *c = ud;
  free(c->body);
  json_decref(c->objects);
  free(c);
}

static void s3_body(void *ud, const void *data, size_t len) {
  s3_call *c = ud;
  char *copy = malloc(len + 1);
  if (!copy) return;
  memcpy(copy, data, len);
  free(c->body);
  c->body = copy;
  c->len = len;
}

static void s3_object(void *ud, const char *key, uint64_t size, const char *etag) {
  s3_call *c = ud;
  json_array_append_new(c->objects, json_pack("{s:s,s:I,s:s}", "key", key, "size", (json_int_t)size,
                                              "etag", etag ? etag : ""));
}

/* Resumes the waiting coroutine through dispatch({type="s3", token, ok, ...}). */
static void s3_done(void *ud, int status, const ffdl_s3_error *err) {
  s3_call *c = ud;
  lua_State *L = c->s->L;
  lua_createtable(L, 0, 5);
  lua_pushliteral(L, "s3");
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, c->token);
  lua_setfield(L, -2, "token");
  lua_pushboolean(L, status == 0);
  lua_setfield(L, -2, "ok");
  if (status != 0) {
    char text[2048];
    ffdl_s3_error_text(err, text, sizeof text);
    lua_pushstring(L, text);
    lua_setfield(L, -2, "error");
  } else if (c->body) {
    lua_pushlstring(L, c->body, c->len);
    lua_setfield(L, -2, "result");
  } else if (c->objects) {
    ffdl_ljson_push(L, c->objects);
    lua_setfield(L, -2, "result");
  }
  dispatch(c->s);
  ffdl_s3_close(c->client, s3_closed, c);
}

static const char *field_or(lua_State *L, int t, const char *a, const char *b) {
  lua_getfield(L, t, a);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_getfield(L, t, b);
  }
  const char *v = lua_tostring(L, -1);
  lua_pop(L, 1); /* the string stays alive in the connection table */
  return v;
}

/* Connection field NAME of the table at T, when present: a string PARSE
 * takes into *OUT (as ffdl_s3_checksum_parse does). Raises a Lua error
 * naming the field and the NAMES it takes otherwise. */
static void parsed_field(lua_State *L, int t, const char *name, int (*parse)(const char *, int *),
                         const char *names, int *out) {
  lua_getfield(L, t, name); /* [-0, +1, e] */
  if (!lua_isnil(L, -1)) {
    const char *text = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (parse(text, out) != 0)
      luaL_error(L, "ffdl.s3: connection.%s must be %s, got %s", name, names,
                 text ? lua_pushfstring(L, "\"%s\"", text) : luaL_typename(L, -1));
  }
  lua_pop(L, 1);
}

/* Connection field NAME of the table at T: an integer from LO to HI, or 0
 * when absent. Raises a Lua error naming the field otherwise. */
static lua_Integer int_field(lua_State *L, int t, const char *name, lua_Integer lo, lua_Integer hi,
                             const char *what) {
  lua_getfield(L, t, name);
  int is_int = 0;
  lua_Integer v = lua_isnil(L, -1) ? 0 : lua_tointegerx(L, -1, &is_int);
  if (!lua_isnil(L, -1) && (!is_int || v < lo || v > hi))
    return luaL_error(L, "ffdl.s3: connection.%s must be %s, got %s", name, what,
                      lua_type(L, -1) == LUA_TSTRING
                          ? lua_pushfstring(L, "\"%s\"", lua_tostring(L, -1))
                      : lua_type(L, -1) == LUA_TNUMBER ? lua_tostring(L, -1)
                                                       : luaL_typename(L, -1));
  lua_pop(L, 1);
  return v;
}

/* The arguments of ffdl.s3.OP that must be non-empty strings, by their
 * names in ffdl.lua, at core.s3's positions (3: bucket, 4: a, 5: b). */
static int check_s3_args(lua_State *L, int op, const char *const *ops) {
  static const struct {
    int index;
    const char *name;
    int may_be_empty;
  } wanted[][3] = {{{3, "bucket", 0}, {4, "key", 0}, {5, "data", 1}}, /* put */
                   {{3, "bucket", 0}, {4, "key", 0}, {0, NULL, 0}},   /* get */
                   {{3, "bucket", 0}, {4, "prefix", 1}, {0, NULL, 0}},
                   {{3, "bucket", 0}, {4, "dir", 0}, {5, "prefix", 1}},  /* upload_dir */
                   {{3, "bucket", 0}, {4, "prefix", 1}, {5, "dir", 0}}}; /* download_dir */
  for (int i = 0; i < 3 && wanted[op][i].name; i++) {
    int at = wanted[op][i].index, type = lua_type(L, at);
    if (type == LUA_TNUMBER ||
        (type == LUA_TSTRING && (wanted[op][i].may_be_empty || lua_rawlen(L, at) > 0)))
      continue;
    return luaL_error(L, "ffdl.s3.%s: %s must be a%s string, got %s", ops[op], wanted[op][i].name,
                      wanted[op][i].may_be_empty ? "" : " non-empty",
                      type == LUA_TSTRING ? "\"\"" : lua_typename(L, type));
  }
  return 0;
}

/* core.s3(op, connection, bucket, a, b) -> token: starts put/get/list/
 * upload_dir/download_dir; the result arrives as an "s3" event. */
static int l_s3(lua_State *L) {
  static int next_token;
  static const char *const ops[] = {"put", "get", "list", "upload_dir", "download_dir", NULL};
  int op = luaL_checkoption(L, 1, NULL, ops);
  if (!lua_istable(L, 2))
    return luaL_error(L,
                      "ffdl.s3.%s: the connection must be a table {auth_url=, user_name=, "
                      "password=}, got %s",
                      ops[op], luaL_typename(L, 2));
  check_s3_args(L, op, ops);
  const char *bucket = lua_tostring(L, 3);
  ffdl_s3_config cfg = {.endpoint = field_or(L, 2, "endpoint", "auth_url"),
                        .access_key = field_or(L, 2, "access_key", "user_name"),
                        .secret_key = field_or(L, 2, "secret_key", "password"),
                        .region = field_or(L, 2, "region", "region")};
  if (!cfg.endpoint || !cfg.access_key || !cfg.secret_key)
    return luaL_error(L, "ffdl.s3: the connection needs auth_url, user_name and password");
  const char *problem = ffdl_s3_endpoint_problem(cfg.endpoint);
  if (problem)
    return luaL_error(L, "ffdl.s3: connection.auth_url %s, got \"%s\"", problem, cfg.endpoint);
  /* ffdl's extensions; absent: crc32c, 8 MiB parts, 8 requests, path style */
  parsed_field(L, 2, "checksum", ffdl_s3_checksum_parse, FFDL_S3_CHECKSUM_NAMES, &cfg.checksum);
  cfg.part_size = (size_t)int_field(L, 2, "part_size", (lua_Integer)FFDL_S3_MIN_PART_SIZE,
                                    (lua_Integer)FFDL_S3_MAX_PART_SIZE,
                                    "a number of bytes from 5 MiB to 5 GiB (such as 16 * 2^20)");
  cfg.concurrency =
      (int)int_field(L, 2, "concurrency", 1, FFDL_S3_MAX_CONCURRENCY, "an integer from 1 to 256");
  parsed_field(L, 2, "addressing_style", ffdl_s3_addressing_parse, FFDL_S3_ADDRESSING_NAMES,
               &cfg.virtual_host);
  s3_call *c = calloc(1, sizeof *c);
  if (!c) return luaL_error(L, "out of memory");
  c->s = script_of(L);
  c->token = ++next_token;
  if (ffdl_s3_new(c->s->rt->loop, &cfg, &c->client) != 0) {
    free(c);
    return luaL_error(L, "ffdl.s3: cannot create a client for %s", cfg.endpoint);
  }
  size_t blen = 0;
  const char *a = luaL_optstring(L, 4, ""), *b = luaL_optlstring(L, 5, "", &blen);
  int rc;
  switch (op) {
  case 0:
    rc = ffdl_s3_put_buffer(c->client, bucket, a, b, blen, s3_done, c);
    break;
  case 1:
    rc = ffdl_s3_get_buffer(c->client, bucket, a, s3_body, s3_done, c);
    break;
  case 2:
    c->objects = json_array();
    rc = ffdl_s3_list(c->client, bucket, a, s3_object, s3_done, c);
    break;
  case 3:
    rc = ffdl_s3_upload_dir(c->client, bucket, b, a, NULL, s3_done, c);
    break;
  default:
    rc = ffdl_s3_download_prefix(c->client, bucket, a, b, NULL, s3_done, c);
    break;
  }
  if (rc != 0) {
    ffdl_s3_close(c->client, s3_closed, c);
    return luaL_error(L, "ffdl.s3.%s: cannot start (%s)", ops[op], ffdl_strerror(rc));
  }
  lua_pushinteger(L, c->token);
  return 1;
}

static const luaL_Reg core_funcs[] = {{"now", l_now},
                                      {"submit", l_submit},
                                      {"status", l_status},
                                      {"halt", l_halt},
                                      {"results_dir", l_results_dir},
                                      {"job", l_job},
                                      {"copy_tree", l_copy_tree},
                                      {"download", l_download},
                                      {"s3", l_s3},
                                      {"set_dispatcher", l_set_dispatcher},
                                      {"fail", l_fail},
                                      {NULL, NULL}};

static int open_core(lua_State *L) {
  luaL_newlib(L, core_funcs);
  return 1;
}

/* ---- running the script ---------------------------------------------- */

static void on_signal(uv_signal_t *h, int signum) {
  script *s = h->data;
  fprintf(stderr, "\nffdl-run: %s: halting every job\n",
          signum == SIGINT ? "interrupted" : "terminated");
  s->interrupted = 1;
  halt_everything(s, signum == SIGINT ? "interrupted (Ctrl-C)" : "terminated (SIGTERM)");
}

static void setup_state(script *s, const char *path) {
  lua_State *L = s->L;
  luaL_openlibs(L);
  lua_pushlightuserdata(L, s);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &SCRIPT_KEY);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open_core);
  lua_setfield(L, -2, "ffdl.core");
  lua_pop(L, 1);
  /* require "ffdl" finds lua/script/ffdl.lua, then the script's own directory */
  char *copy = strdup(path);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/../script/?.lua;%s/?.lua;", ffdl_paths_lua_dir(), dirname(copy));
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  free(copy);
  lua_getglobal(L, "os");
  lua_pushcfunction(L, l_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
}

static int traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

/* Loads the script and hands it to ffdl.__start, which runs it as a
 * coroutine. Returns 0, or 2 with the error printed. */
/* PATH relative to the current directory when it is below it: Lua cuts
 * long chunk names, and a short name keeps file:line readable. */
static const char *short_path(const char *path) {
  char cwd[4096];
  size_t n;
  if (getcwd(cwd, sizeof cwd) && (n = strlen(cwd)) && strncmp(path, cwd, n) == 0 && path[n] == '/')
    return path + n + 1;
  return path;
}

static int start(script *s, const char *path, int *spec_table) {
  lua_State *L = s->L;
  path = short_path(path);
  lua_pushcfunction(L, traceback);
  if (luaL_loadfilex(L, path, "t") != LUA_OK) {
    fprintf(stderr, "ffdl-run: %s\n", lua_tostring(L, -1));
    return 2;
  }
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ffdl");
  if (lua_pcall(L, 1, 1, 1) != LUA_OK) {
    fprintf(stderr, "ffdl-run: cannot load the ffdl module: %s\n", lua_tostring(L, -1));
    return 2;
  }
  lua_getfield(L, -1, "__start");
  lua_remove(L, -2);
  lua_insert(L, -2);
  lua_pushstring(L, path);
  if (lua_pcall(L, 2, 2, 1) != LUA_OK) {
    fprintf(stderr, "ffdl-run: %s\n", lua_tostring(L, -1));
    return 2;
  }
  if (!lua_toboolean(L, -2)) {
    fprintf(stderr, "ffdl-run: %s\n", lua_tostring(L, -1));
    halt_everything(s, "the job script failed");
    s->failed = 1;
    return 0; /* the loop still runs, so that the halted jobs end cleanly */
  }
  *spec_table = lua_istable(L, -1);
  return 0;
}

int ffdl_script_run(ffdl_runtime *rt, ffdl_ui *ui, const char *path, int remote, int *spec_table) {
  script s = {.rt = rt, .ui = ui, .dispatch_ref = LUA_NOREF, .exit_code = -1};
  if (remote && ffdl_remote_new(rt->loop, &script_observer, &s, &s.remote) != 0) return 2;
  *spec_table = 0;
  s.L = luaL_newstate();
  if (!s.L) return 2;
  setup_state(&s, path);
  ffdl_orch_set_observer(rt->orch, &script_observer, &s);
  uv_signal_init(rt->loop, &s.sigint);
  uv_signal_init(rt->loop, &s.sigterm);
  s.sigint.data = s.sigterm.data = &s;
  uv_signal_start(&s.sigint, on_signal, SIGINT);
  uv_signal_start(&s.sigterm, on_signal, SIGTERM);
  uv_unref((uv_handle_t *)&s.sigint);
  uv_unref((uv_handle_t *)&s.sigterm);
  int rc = start(&s, path, spec_table);
  if (rc == 0 && !*spec_table) uv_run(rt->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&s.sigint, NULL);
  uv_close((uv_handle_t *)&s.sigterm, NULL);
  uv_run(rt->loop, UV_RUN_NOWAIT);
  ffdl_orch_set_observer(rt->orch, NULL, NULL);
  if (s.remote) {
    ffdl_remote_free(s.remote);
    uv_run(rt->loop, UV_RUN_NOWAIT);
  }
  lua_close(s.L);
  if (rc != 0 || s.failed) return 2;
  if (s.interrupted) return 130;
  return s.exit_code >= 0 ? s.exit_code : 0;
}
