/*
 * lyaml.c: libyaml's event parser turned into Lua tables plus a position map.
 * Owns: YAML scalar typing, duplicate-key, depth and alias-expansion limits.
 * Must not: read files or know what a manifest is.
 */
#include "policy/lyaml.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define MAX_DEPTH 64
#define MAX_NODES 100000
#define MAX_PATH 1024

typedef struct {
  yaml_parser_t parser;
  yaml_event_t event;
  int parser_ready, event_ready;
  const char *text;
  size_t len;
  int pos_idx, anchors_idx;
  long nodes;
  char path[MAX_PATH];
  size_t path_len;
  /* the first error */
  int failed, err_line, err_col;
  char err_path[MAX_PATH];
  char err_msg[320];
} decoder;

/* __gc for the decoder userdata: frees libyaml state even after a Lua
 * error (out of memory) unwound through decode. Safe to call twice. */
static void decoder_release(decoder *d) {
  if (d->event_ready) yaml_event_delete(&d->event);
  if (d->parser_ready) yaml_parser_delete(&d->parser);
  d->event_ready = d->parser_ready = 0;
}

static int decoder_gc(lua_State *L) {
  decoder_release(lua_touserdata(L, 1));
  return 0;
}

static void fail(decoder *d, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(decoder *d, int line, int col, const char *fmt, ...) {
  if (d->failed) return;
  d->failed = 1;
  d->err_line = line;
  d->err_col = col;
  memcpy(d->err_path, d->path, d->path_len + 1);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->err_msg, sizeof d->err_msg, fmt, ap);
  va_end(ap);
}

/* Converts a byte offset into 1-based line and column. */
static void offset_to_mark(const decoder *d, size_t offset, int *line, int *col) {
  *line = 1;
  *col = 1;
  for (size_t i = 0; i < offset && i < d->len; i++) {
    if (d->text[i] == '\n') {
      (*line)++;
      *col = 1;
    } else {
      (*col)++;
    }
  }
}

static void fail_from_parser(decoder *d) {
  yaml_parser_t *p = &d->parser;
  int line, col;
  if (p->error == YAML_READER_ERROR) {
    offset_to_mark(d, p->problem_offset, &line, &col);
    if (p->problem_value != -1)
      fail(d, line, col, "not valid UTF-8: %s (byte 0x%02x); save the file as UTF-8", p->problem,
           (unsigned)p->problem_value & 0xff);
    else
      fail(d, line, col, "not valid UTF-8: %s; save the file as UTF-8", p->problem);
    return;
  }
  if (p->error == YAML_MEMORY_ERROR) {
    fail(d, 1, 1, "out of memory while parsing YAML");
    return;
  }
  line = (int)p->problem_mark.line + 1;
  col = (int)p->problem_mark.column + 1;
  size_t at = p->problem_mark.index;
  if (at < d->len && d->text[at] == '\t') {
    fail(d, line, col, "YAML syntax error: a tab character cannot indent YAML; use spaces");
  } else if (p->context) {
    fail(d, line, col, "YAML syntax error: %s (%s at line %d)", p->problem ? p->problem : "?",
         p->context, (int)p->context_mark.line + 1);
  } else {
    fail(d, line, col, "YAML syntax error: %s", p->problem ? p->problem : "?");
  }
}

/* Reads the next event into d->event; 0 on success. */
static int next_event(decoder *d) {
  if (d->event_ready) {
    yaml_event_delete(&d->event);
    d->event_ready = 0;
  }
  if (!yaml_parser_parse(&d->parser, &d->event)) {
    fail_from_parser(d);
    return -1;
  }
  d->event_ready = 1;
  return 0;
}

static int is_one_of(const char *v, const char *const *words) {
  for (; *words; words++)
    if (strcmp(v, *words) == 0) return 1;
  return 0;
}

static int looks_like_float(const char *v) {
  const char *p = v;
  if (*p == '+' || *p == '-') p++;
  int digits = 0;
  while (*p >= '0' && *p <= '9')
    p++, digits++;
  if (*p == '.') {
    p++;
    while (*p >= '0' && *p <= '9')
      p++, digits++;
  }
  if (!digits) return 0;
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!(*p >= '0' && *p <= '9')) return 0;
    while (*p >= '0' && *p <= '9')
      p++;
  }
  return *p == '\0';
}

static int looks_like_int(const char *v, int *base) {
  const char *p = v;
  if (*p == '+' || *p == '-') p++;
  *base = 10;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
    *base = 16, p += 2;
  else if (p[0] == '0' && p[1] == 'o')
    *base = 8, p += 2;
  if (!*p) return 0;
  for (; *p; p++) {
    int ok = *base == 16 ? (strchr("0123456789abcdefABCDEF", *p) != NULL)
                         : (*p >= '0' && *p <= (*base == 8 ? '7' : '9'));
    if (!ok) return 0;
  }
  return 1;
}

/* Pushes a plain scalar with YAML 1.1 core typing.  [-0, +1, m] */
static void push_plain_scalar(lua_State *L, const char *v, size_t n) {
  static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
  static const char *const trues[] = {"true", "True", "TRUE", "yes", "Yes",
                                      "YES",  "on",   "On",   "ON",  NULL};
  static const char *const falses[] = {"false", "False", "FALSE", "no",  "No",
                                       "NO",    "off",   "Off",   "OFF", NULL};
  static const char *const infs[] = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", NULL};
  static const char *const ninfs[] = {"-.inf", "-.Inf", "-.INF", NULL};
  static const char *const nans[] = {".nan", ".NaN", ".NAN", NULL};
  int base;
  if (is_one_of(v, nulls))
    lua_pushnil(L);
  else if (is_one_of(v, trues))
    lua_pushboolean(L, 1);
  else if (is_one_of(v, falses))
    lua_pushboolean(L, 0);
  else if (is_one_of(v, infs))
    lua_pushnumber(L, HUGE_VAL);
  else if (is_one_of(v, ninfs))
    lua_pushnumber(L, -HUGE_VAL);
  else if (is_one_of(v, nans))
    lua_pushnumber(L, NAN);
  else if (looks_like_int(v, &base)) {
    const char *digits = v + ((v[0] == '+' || v[0] == '-') ? 1 : 0) + (base != 10 ? 2 : 0);
    errno = 0;
    unsigned long long mag = strtoull(digits, NULL, base);
    if (errno == ERANGE || mag > (unsigned long long)LLONG_MAX)
      lua_pushnumber(L, strtod(v, NULL));
    else
      lua_pushinteger(L, v[0] == '-' ? -(lua_Integer)mag : (lua_Integer)mag);
  } else if (looks_like_float(v))
    lua_pushnumber(L, strtod(v, NULL));
  else
    lua_pushlstring(L, v, n);
}

/* positions[path] = {line=, col=, kline=, kcol=, raw=}  [-0, +0, m] */
static void record_position(decoder *d, lua_State *L, const yaml_mark_t *mark,
                            const yaml_mark_t *key_mark, const char *raw, size_t raw_len) {
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, (lua_Integer)mark->line + 1);
  lua_setfield(L, -2, "line");
  lua_pushinteger(L, (lua_Integer)mark->column + 1);
  lua_setfield(L, -2, "col");
  const yaml_mark_t *k = key_mark ? key_mark : mark;
  lua_pushinteger(L, (lua_Integer)k->line + 1);
  lua_setfield(L, -2, "kline");
  lua_pushinteger(L, (lua_Integer)k->column + 1);
  lua_setfield(L, -2, "kcol");
  if (raw) {
    lua_pushlstring(L, raw, raw_len);
    lua_setfield(L, -2, "raw");
  }
  lua_pushlstring(L, d->path, d->path_len);
  lua_insert(L, -2);
  lua_rawset(L, d->pos_idx);
}

/* Appends ".key" (or "key" at the root) to the path; returns the old length. */
static size_t push_key(decoder *d, const char *key) {
  size_t saved = d->path_len;
  int n = snprintf(d->path + d->path_len, MAX_PATH - d->path_len, "%s%s", saved ? "." : "", key);
  if (n < 0 || (size_t)n >= MAX_PATH - saved)
    d->path[saved] = '\0';
  else
    d->path_len += (size_t)n;
  return saved;
}

/* Appends "[index]" to the path; returns the old length. */
static size_t push_index(decoder *d, long index) {
  size_t saved = d->path_len;
  int n = snprintf(d->path + d->path_len, MAX_PATH - d->path_len, "[%ld]", index);
  if (n < 0 || (size_t)n >= MAX_PATH - saved)
    d->path[saved] = '\0';
  else
    d->path_len += (size_t)n;
  return saved;
}

static void pop_path(decoder *d, size_t saved) {
  d->path_len = saved;
  d->path[saved] = '\0';
}

static long parse_node(decoder *d, lua_State *L, int depth, const yaml_mark_t *key_mark);

static void remember_anchor(decoder *d, lua_State *L, const yaml_char_t *anchor, long size) {
  if (!anchor) return;
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, size);
  lua_rawseti(L, -2, 2);
  lua_setfield(L, d->anchors_idx, (const char *)anchor);
}

/* Parses the entries of a mapping into the table at the top. */
static long parse_mapping_body(decoder *d, lua_State *L, int depth) {
  long size = 1;
  for (;;) {
    if (next_event(d)) return -1;
    if (d->event.type == YAML_MAPPING_END_EVENT) return size;
    yaml_mark_t key_mark = d->event.start_mark;
    if (d->event.type != YAML_SCALAR_EVENT) {
      fail(d, (int)key_mark.line + 1, (int)key_mark.column + 1,
           "mapping keys must be plain strings, not %s",
           d->event.type == YAML_ALIAS_EVENT ? "aliases" : "mappings or sequences");
      return -1;
    }
    lua_pushlstring(L, (const char *)d->event.data.scalar.value, d->event.data.scalar.length);
    const char *key = lua_tostring(L, -1);
    size_t saved = push_key(d, key);
    /* positions, not the table, tell duplicates: a null value is not stored */
    lua_pushlstring(L, d->path, d->path_len);
    if (lua_rawget(L, d->pos_idx) == LUA_TTABLE) {
      lua_getfield(L, -1, "kline");
      int first = (int)lua_tointeger(L, -1);
      lua_pop(L, 2);
      fail(d, (int)key_mark.line + 1, (int)key_mark.column + 1,
           "duplicate key \"%s\" (first defined at line %d)", key, first);
      return -1;
    }
    lua_pop(L, 1);
    if (next_event(d)) return -1;
    long child = parse_node(d, L, depth + 1, &key_mark);
    if (child < 0) return -1;
    /* a null value leaves the key out of the table; positions still have it */
    lua_rawset(L, -3);
    pop_path(d, saved);
    size += child;
  }
}

static long parse_sequence_body(decoder *d, lua_State *L, int depth) {
  long size = 1;
  for (lua_Integer i = 1;; i++) {
    if (next_event(d)) return -1;
    if (d->event.type == YAML_SEQUENCE_END_EVENT) return size;
    size_t saved = push_index(d, (long)(i - 1));
    long child = parse_node(d, L, depth + 1, NULL);
    if (child < 0) return -1;
    lua_rawseti(L, -2, i);
    pop_path(d, saved);
    size += child;
  }
}

/* Parses the node whose first event is in d->event and pushes its value.
 * Returns the node count (aliases expanded) or -1 after fail(). */
static long parse_node(decoder *d, lua_State *L, int depth, const yaml_mark_t *key_mark) {
  yaml_event_t *ev = &d->event;
  yaml_mark_t mark = ev->start_mark;
  int line = (int)mark.line + 1, col = (int)mark.column + 1;
  luaL_checkstack(L, 8, "YAML nesting");
  if (depth > MAX_DEPTH) {
    fail(d, line, col, "nesting deeper than %d levels", MAX_DEPTH);
    return -1;
  }
  long size;
  switch (ev->type) {
  case YAML_SCALAR_EVENT: {
    const char *v = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    int plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    if (!plain || (tag && strcmp(tag, YAML_STR_TAG) == 0))
      lua_pushlstring(L, v, n);
    else
      push_plain_scalar(L, v, n);
    record_position(d, L, &mark, key_mark, v, n);
    size = 1;
    remember_anchor(d, L, ev->data.scalar.anchor, size);
    break;
  }
  case YAML_ALIAS_EVENT: {
    const char *name = (const char *)ev->data.alias.anchor;
    if (lua_getfield(L, d->anchors_idx, name) != LUA_TTABLE) {
      lua_pop(L, 1);
      fail(d, line, col, "unknown alias *%s", name);
      return -1;
    }
    lua_rawgeti(L, -1, 2);
    size = (long)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    record_position(d, L, &mark, key_mark, NULL, 0);
    break;
  }
  case YAML_MAPPING_START_EVENT: {
    yaml_char_t *anchor = ev->data.mapping_start.anchor;
    char *anchor_copy = anchor ? strdup((char *)anchor) : NULL;
    lua_newtable(L);
    record_position(d, L, &mark, key_mark, NULL, 0);
    size = parse_mapping_body(d, L, depth);
    if (size >= 0) remember_anchor(d, L, (yaml_char_t *)anchor_copy, size);
    free(anchor_copy);
    if (size < 0) return -1;
    break;
  }
  case YAML_SEQUENCE_START_EVENT: {
    yaml_char_t *anchor = ev->data.sequence_start.anchor;
    char *anchor_copy = anchor ? strdup((char *)anchor) : NULL;
    lua_newtable(L);
    record_position(d, L, &mark, key_mark, NULL, 0);
    size = parse_sequence_body(d, L, depth);
    if (size >= 0) remember_anchor(d, L, (yaml_char_t *)anchor_copy, size);
    free(anchor_copy);
    if (size < 0) return -1;
    break;
  }
  default:
    fail(d, line, col, "unexpected YAML event");
    return -1;
  }
  d->nodes += size;
  if (d->nodes > MAX_NODES) {
    fail(d, line, col, "more than %d nodes once aliases are expanded (an alias bomb?)", MAX_NODES);
    return -1;
  }
  return size;
}

/* Parses the whole stream: exactly one document, or none (empty). */
static int parse_stream(decoder *d, lua_State *L) {
  if (next_event(d)) return -1; /* stream start */
  if (next_event(d)) return -1;
  if (d->event.type == YAML_STREAM_END_EVENT) {
    lua_pushnil(L);
    return 0;
  }
  if (next_event(d)) return -1; /* the root node's first event */
  if (parse_node(d, L, 0, NULL) < 0) return -1;
  if (next_event(d)) return -1; /* document end */
  if (next_event(d)) return -1;
  if (d->event.type != YAML_STREAM_END_EVENT) {
    fail(d, (int)d->event.start_mark.line + 1, (int)d->event.start_mark.column + 1,
         "only one YAML document is allowed per file");
    return -1;
  }
  return 0;
}

static void push_error(lua_State *L, const decoder *d) {
  lua_pushnil(L);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, d->err_line);
  lua_setfield(L, -2, "line");
  lua_pushinteger(L, d->err_col);
  lua_setfield(L, -2, "col");
  lua_pushstring(L, d->err_path);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, d->err_msg);
  lua_setfield(L, -2, "message");
}

int ffdl_lyaml_decode(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  lua_settop(L, 1);
  decoder *d = lua_newuserdatauv(L, sizeof *d, 0); /* 2 */
  memset(d, 0, sizeof *d);
  lua_newtable(L); /* 3: metatable */
  lua_pushcfunction(L, decoder_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, 2);
  lua_newtable(L); /* 3: positions */
  lua_newtable(L); /* 4: anchors */
  d->pos_idx = 3;
  d->anchors_idx = 4;
  d->text = text;
  d->len = len;
  if (!yaml_parser_initialize(&d->parser)) return luaL_error(L, "out of memory");
  d->parser_ready = 1;
  yaml_parser_set_input_string(&d->parser, (const unsigned char *)text, len);
  yaml_parser_set_encoding(&d->parser, YAML_UTF8_ENCODING);
  int rc = parse_stream(d, L);
  decoder_release(d);
  if (rc != 0) {
    push_error(L, d);
    return 2;
  }
  lua_pushvalue(L, d->pos_idx);
  return 2;
}
