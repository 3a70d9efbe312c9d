/*
 * spec.c: the validation pipeline for manifests and Lua job specs.
 * Owns: file-level checks (size, emptiness, NUL bytes, JSON syntax), the
 * order of the stages, and diagnostics. Must not: know manifest fields:
 * those live in lua/ffdl/manifest.lua and policies/validate.lua.
 */
#include "policy/spec.h"
#include "core/error.h"
#include "core/file.h"
#include "policy/ljson.h"
#include "policy/lyaml.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

static void diag_add(ffdl_diags *diags, int line, int col, int warning, const char *path,
                     const char *message) {
  if (diags->n == diags->cap) {
    size_t cap = diags->cap ? diags->cap * 2 : 8;
    ffdl_diag *grown = realloc(diags->items, cap * sizeof *grown);
    if (!grown) return;
    diags->items = grown;
    diags->cap = cap;
  }
  ffdl_diag *d = &diags->items[diags->n++];
  d->line = line > 0 ? line : 1;
  d->col = col > 0 ? col : 1;
  d->warning = warning;
  d->path = strdup(path ? path : "(file)");
  d->message = strdup(message ? message : "(no message)");
}

size_t ffdl_diags_errors(const ffdl_diags *diags) {
  size_t n = 0;
  for (size_t i = 0; i < diags->n; i++)
    n += !diags->items[i].warning;
  return n;
}

void ffdl_diags_free(ffdl_diags *diags) {
  for (size_t i = 0; i < diags->n; i++) {
    free(diags->items[i].path);
    free(diags->items[i].message);
  }
  free(diags->items);
  memset(diags, 0, sizeof *diags);
}

static int compare_diags(const void *a, const void *b) {
  const ffdl_diag *x = a, *y = b;
  if (x->line != y->line) return x->line - y->line;
  if (x->col != y->col) return x->col - y->col;
  return strcmp(x->path, y->path);
}

void ffdl_diags_print(ffdl_diags *diags, const char *name, FILE *out) {
  if (diags->n == 0) return; /* qsort must not see the NULL array */
  qsort(diags->items, diags->n, sizeof *diags->items, compare_diags);
  for (size_t i = 0; i < diags->n; i++) {
    const ffdl_diag *d = &diags->items[i];
    fprintf(out, "%s:%d:%d: %s%s: %s\n", name, d->line, d->col, d->warning ? "warning: " : "",
            d->path, d->message);
  }
}

/* 1-based line and column of byte OFFSET. */
static void locate_offset(const char *text, size_t offset, int *line, int *col) {
  *line = 1;
  *col = 1;
  for (size_t i = 0; i < offset; i++) {
    if (text[i] == '\n')
      (*line)++, *col = 1;
    else
      (*col)++;
  }
}

static ffdl_spec_format format_from_name(const char *name) {
  const char *dot = strrchr(name, '.');
  if (!dot) return FFDL_SPEC_AUTO;
  if (strcmp(dot, ".yml") == 0 || strcmp(dot, ".yaml") == 0) return FFDL_SPEC_YAML;
  if (strcmp(dot, ".json") == 0) return FFDL_SPEC_JSON;
  if (strcmp(dot, ".lua") == 0) return FFDL_SPEC_LUA;
  return FFDL_SPEC_AUTO;
}

/* Problems that make the bytes unusable as any kind of spec. */
static int check_bytes(const char *text, size_t len, ffdl_diags *diags) {
  const char *nul = memchr(text, '\0', len);
  if (nul) {
    int line, col;
    locate_offset(text, (size_t)(nul - text), &line, &col);
    diag_add(diags, line, col, 0, "(file)",
             "contains a NUL byte: this is binary data, not a text "
             "manifest");
    return FFDL_EINVALID;
  }
  size_t i = 0;
  while (i < len && strchr(" \t\r\n", text[i]))
    i++;
  if (i == len) {
    diag_add(diags, 1, 1, 0, "(file)",
             "the file is empty: a manifest needs at least name and "
             "framework");
    return FFDL_EINVALID;
  }
  return FFDL_OK;
}

/* Turns "chunk:LINE: message" (a Lua error) into a diagnostic. */
static void add_lua_error(ffdl_diags *diags, const char *name, const char *path, const char *err) {
  size_t n = strlen(name);
  int line = 1;
  const char *msg = err;
  if (strncmp(err, name, n) == 0 && err[n] == ':') {
    char *end;
    long parsed = strtol(err + n + 1, &end, 10);
    if (end != err + n + 1 && *end == ':') {
      line = (int)parsed;
      msg = end + 1;
      while (*msg == ' ')
        msg++;
    }
  }
  diag_add(diags, line, 1, 0, path, msg);
}

/* Pushes doc, positions for YAML or JSON text.  [-0, +2] or error. */
static int decode_yaml(ffdl_sandbox *sb, const char *text, size_t len, ffdl_diags *diags) {
  lua_State *L = ffdl_sandbox_state(sb);
  char *err;
  lua_pushcfunction(L, ffdl_lyaml_decode);
  lua_pushlstring(L, text, len);
  int rc = ffdl_policy_call(sb, "yaml.decode", 1, 2, 0, &err);
  if (rc != FFDL_OK) {
    diag_add(diags, 1, 1, 0, "(file)", err);
    free(err);
    return rc;
  }
  if (!lua_isnil(L, -2)) return FFDL_OK;
  if (lua_getfield(L, -1, "message") != LUA_TSTRING) { /* nil, positions: no document */
    lua_pop(L, 3);
    diag_add(diags, 1, 1, 0, "(file)", "the file has no content, only comments or blank lines");
    return FFDL_EINVALID;
  }
  lua_pop(L, 1);
  { /* nil, {line, col, path, message} */
    lua_getfield(L, -1, "line");
    lua_getfield(L, -2, "col");
    lua_getfield(L, -3, "path");
    lua_getfield(L, -4, "message");
    const char *path = lua_tostring(L, -2);
    diag_add(diags, (int)lua_tointeger(L, -4), (int)lua_tointeger(L, -3), 0,
             path && *path ? path : "(file)", lua_tostring(L, -1));
    lua_pop(L, 6);
    return FFDL_EINVALID;
  }
  return FFDL_OK;
}

static int decode_json(ffdl_sandbox *sb, const char *text, size_t len, ffdl_diags *diags) {
  json_error_t jerr;
  json_t *strict = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!strict) {
    char msg[256];
    snprintf(msg, sizeof msg, "JSON syntax error: %s", jerr.text);
    diag_add(diags, jerr.line, jerr.column, 0, "(file)", msg);
    return FFDL_EINVALID;
  }
  json_decref(strict);
  /* JSON is YAML flow style: the YAML reader gives the positions */
  return decode_yaml(sb, text, len, diags);
}

/* Runs a declarative Lua spec; pushes doc, positions. */
static int decode_lua(ffdl_generation *gen, const char *name, const char *text, size_t len,
                      ffdl_diags *diags) {
  ffdl_sandbox *sb = ffdl_generation_sandbox(gen);
  lua_State *L = ffdl_sandbox_state(sb);
  char chunk[4200], *err;
  snprintf(chunk, sizeof chunk, "@%s", name);
  ffdl_sandbox_push_env(L);
  if (ffdl_sandbox_load(sb, chunk, text, len, &err) != FFDL_OK) {
    add_lua_error(diags, name, "(lua)", err);
    free(err);
    return FFDL_EINVALID;
  }
  if (ffdl_policy_call(sb, "spec", 0, 1, 0, &err) != FFDL_OK) {
    add_lua_error(diags, name, "(lua)", err);
    free(err);
    return FFDL_EINVALID;
  }
  if (!lua_istable(L, -1)) {
    char msg[128];
    snprintf(msg, sizeof msg, "a Lua job spec must return a table, got %s", luaL_typename(L, -1));
    lua_pop(L, 1);
    diag_add(diags, 1, 1, 0, "(lua)", msg);
    return FFDL_EINVALID;
  }
  ffdl_generation_push_runtime(gen, "luapos");
  lua_getfield(L, -1, "scan");
  lua_remove(L, -2);
  lua_pushlstring(L, text, len);
  if (ffdl_policy_call(sb, "luapos.scan", 1, 1, 0, &err) != FFDL_OK) {
    free(err); /* positions are a convenience: without them every line is 1 */
    lua_newtable(L);
  }
  return FFDL_OK;
}

/* Reads diags = {{path=, message=, warning=, line=, col=}, ...} at IDX. */
static void collect_diags(lua_State *L, int idx, ffdl_diags *diags) {
  lua_Integer n = lua_istable(L, idx) ? (lua_Integer)lua_rawlen(L, idx) : 0;
  for (lua_Integer i = 1; i <= n; i++) {
    if (lua_rawgeti(L, idx, i) != LUA_TTABLE) {
      lua_pop(L, 1);
      continue;
    }
    ffdl_raw_field(L, -1, "line");
    ffdl_raw_field(L, -2, "col");
    ffdl_raw_field(L, -3, "warning");
    ffdl_raw_field(L, -4, "path");
    ffdl_raw_field(L, -5, "message");
    const char *path = lua_tostring(L, -2), *msg = lua_tostring(L, -1);
    diag_add(diags, (int)lua_tointeger(L, -5), (int)lua_tointeger(L, -4), lua_toboolean(L, -3),
             path && *path ? path : "(file)", msg ? msg : "(no message)");
    lua_pop(L, 6);
  }
}

/* Calls runtime manifest.FUNC with NARGS arguments already pushed after
 * the function slot; see the callers for the stack shape. */
static int call_manifest(ffdl_generation *gen, const char *func, int nargs, int nres,
                         ffdl_diags *diags) {
  ffdl_sandbox *sb = ffdl_generation_sandbox(gen);
  lua_State *L = ffdl_sandbox_state(sb);
  ffdl_generation_push_runtime(gen, "manifest");
  lua_getfield(L, -1, func);
  lua_remove(L, -2);
  lua_insert(L, -(nargs + 1));
  char *err;
  int rc = ffdl_policy_call(sb, func, nargs, nres, 0, &err);
  if (rc != FFDL_OK) {
    char msg[1024];
    snprintf(msg, sizeof msg, "internal error in lua/ffdl/manifest.lua %s(): %s", func, err);
    diag_add(diags, 1, 1, 0, "(file)", msg);
    free(err);
  }
  return rc;
}

/* With [doc, pos] on the stack: normalizes, runs validate(), locates.
 * Leaves [spec-or-nil]. */
static int normalize_and_validate(ffdl_generation *gen, const char *name, ffdl_diags *diags) {
  ffdl_sandbox *sb = ffdl_generation_sandbox(gen);
  lua_State *L = ffdl_sandbox_state(sb);
  int pos = lua_gettop(L);
  /* manifest.normalize(doc, pos, ctx) -> spec|nil, diags */
  ffdl_generation_push_ctx(gen, name);
  int ctx = lua_gettop(L);
  lua_pushvalue(L, pos - 1);
  lua_pushvalue(L, pos);
  lua_pushvalue(L, ctx);
  if (call_manifest(gen, "normalize", 3, 2, diags) != FFDL_OK) return FFDL_ELUA;
  int spec = ctx + 1, list = ctx + 2;

  if (!lua_isnil(L, spec)) {
    /* the team's validate(spec, ctx), on a copy so that it cannot alter the spec */
    ffdl_generation_push_policy(gen, "validate");
    if (lua_istable(L, -1))
      ffdl_raw_field(L, -1, "validate");
    else
      lua_pushnil(L);
    lua_remove(L, -2);
    lua_pushvalue(L, spec);
    lua_pushvalue(L, ctx);
    char *err = NULL;
    int prc;
    if (!lua_isfunction(L, -3)) {
      lua_pop(L, 3);
      prc = FFDL_EINVALID;
      err = strdup("validate.lua does not define validate(spec, ctx)");
    } else {
      /* [validate, spec-copy, ctx]: copy the spec first */
      lua_pushvalue(L, spec);
      if (call_manifest(gen, "copy", 1, 1, diags) != FFDL_OK) return FFDL_ELUA;
      lua_replace(L, -3);
      prc = ffdl_policy_call(sb, "validate", 2, 2, 0, &err);
    }
    /* manifest.merge_policy(list, ok, errs, err) appends the policy's verdict */
    lua_pushvalue(L, list);
    if (prc == FFDL_OK) {
      lua_rotate(L, -3, 1);
      lua_pushnil(L);
    } else {
      lua_pushnil(L);
      lua_pushnil(L);
      lua_pushstring(L, err);
    }
    free(err);
    if (call_manifest(gen, "merge_policy", 4, 0, diags) != FFDL_OK) return FFDL_ELUA;
  }
  /* manifest.locate(pos, list) fills line and col */
  lua_pushvalue(L, pos);
  lua_pushvalue(L, list);
  if (call_manifest(gen, "locate", 2, 0, diags) != FFDL_OK) return FFDL_ELUA;
  collect_diags(L, list, diags);
  lua_settop(L, spec);
  lua_replace(L, pos - 1);
  lua_settop(L, pos - 1);
  return FFDL_OK;
}

int ffdl_spec_check_buffer(ffdl_generation *gen, const char *name, const char *text, size_t len,
                           ffdl_spec_format format, ffdl_diags *diags, json_t **spec_out) {
  ffdl_sandbox *sb = ffdl_generation_sandbox(gen);
  lua_State *L = ffdl_sandbox_state(sb);
  int top = lua_gettop(L);
  size_t errors_before = ffdl_diags_errors(diags);
  if (spec_out) *spec_out = NULL;
  if (format == FFDL_SPEC_AUTO) format = format_from_name(name);
  int rc;
  if (format == FFDL_SPEC_AUTO) {
    diag_add(diags, 1, 1, 0, "(file)", "unknown file type: expected .yml, .yaml, .json or .lua");
    return FFDL_EINVALID;
  }
  rc = check_bytes(text, len, diags);
  if (rc == FFDL_OK) {
    if (format == FFDL_SPEC_LUA)
      rc = decode_lua(gen, name, text, len, diags);
    else if (format == FFDL_SPEC_JSON)
      rc = decode_json(sb, text, len, diags);
    else
      rc = decode_yaml(sb, text, len, diags);
  }
  if (rc == FFDL_OK) rc = normalize_and_validate(gen, name, diags);
  if (rc == FFDL_OK && ffdl_diags_errors(diags) == errors_before && spec_out && !lua_isnil(L, -1)) {
    const char *err;
    *spec_out = ffdl_ljson_from_lua(L, -1, &err);
    if (!*spec_out) diag_add(diags, 1, 1, 0, "(file)", err);
  }
  lua_settop(L, top);
  return ffdl_diags_errors(diags) > errors_before ? FFDL_EINVALID : rc;
}

int ffdl_spec_check_file(ffdl_generation *gen, const char *path, ffdl_diags *diags, json_t **spec) {
  char *text;
  size_t len;
  int rc = ffdl_file_read(path, FFDL_SPEC_MAX_BYTES, &text, &len);
  if (rc != FFDL_OK) {
    char msg[256];
    if (rc == FFDL_ETOOBIG)
      snprintf(msg, sizeof msg, "the file is larger than the %u KiB limit for job specs",
               FFDL_SPEC_MAX_BYTES >> 10);
    else
      snprintf(msg, sizeof msg, "cannot read the file: %s",
               rc == FFDL_EIO ? strerror(errno) : ffdl_strerror(rc));
    diag_add(diags, 1, 1, 0, "(file)", msg);
    if (spec) *spec = NULL;
    return FFDL_EINVALID;
  }
  rc = ffdl_spec_check_buffer(gen, path, text, len, FFDL_SPEC_AUTO, diags, spec);
  free(text);
  return rc;
}

static int is_secret_key(const char *key) {
  static const char *const secrets[] = {"password", "secret", "secret_key", "token", NULL};
  for (const char *const *s = secrets; *s; s++)
    if (strcmp(key, *s) == 0) return 1;
  return 0;
}

static void redact_in_place(json_t *value) {
  if (json_is_object(value) && json_is_true(json_object_get(value, FFDL_SPEC_SERVER_STORE)))
    json_object_set_new(value, "connection", json_object());
  if (json_is_object(value)) {
    const char *key;
    json_t *item;
    json_object_foreach(value, key, item) {
      if (is_secret_key(key) && json_is_string(item))
        json_object_set_new(value, key, json_string("***"));
      else
        redact_in_place(item);
    }
  } else if (json_is_array(value)) {
    size_t i;
    json_t *item;
    json_array_foreach(value, i, item) redact_in_place(item);
  }
}

json_t *ffdl_spec_redacted(const json_t *spec) {
  json_t *copy = json_deep_copy(spec);
  if (copy) redact_in_place(copy);
  return copy;
}
