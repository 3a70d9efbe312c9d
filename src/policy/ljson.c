/*
 * ljson.c: conversion between Lua values and jansson values.
 * Owns: the Lua<->JSON mapping rules. Must not: read files or do I/O.
 */
#include "policy/ljson.h"

#include <lauxlib.h>
#include <math.h>
#include <string.h>

#define MAX_DEPTH 100

static int is_array(lua_State *L, int idx, size_t *n_out) {
  if (luaL_getmetafield(L, idx, "__jsontype") != LUA_TNIL) {
    int arr = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "array") == 0;
    lua_pop(L, 1);
    if (arr) {
      *n_out = (size_t)lua_rawlen(L, idx);
      return 1;
    }
  }
  size_t n = 0;
  lua_Integer max = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
      lua_pop(L, 1);
      return 0;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k > max) max = k;
    n++;
  }
  *n_out = n;
  return n > 0 && (lua_Integer)n == max;
}

static json_t *convert(lua_State *L, int idx, int depth, const char **err);

static json_t *convert_table(lua_State *L, int idx, int depth, const char **err) {
  size_t n;
  if (is_array(L, idx, &n)) {
    json_t *arr = json_array();
    for (size_t i = 1; arr && i <= n; i++) {
      lua_rawgeti(L, idx, (lua_Integer)i);
      json_t *item = convert(L, lua_gettop(L), depth + 1, err);
      lua_pop(L, 1);
      if (!item || json_array_append_new(arr, item) != 0) {
        json_decref(arr);
        return NULL;
      }
    }
    return arr;
  }
  json_t *obj = json_object();
  lua_pushnil(L);
  while (obj && lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING && !lua_isinteger(L, -2)) {
      *err = "object keys must be strings";
      lua_pop(L, 2);
      json_decref(obj);
      return NULL;
    }
    lua_pushvalue(L, -2);
    const char *key = lua_tostring(L, -1); /* converts a copy, never the key */
    json_t *item = convert(L, lua_gettop(L) - 1, depth + 1, err);
    if (!item || json_object_set_new(obj, key, item) != 0) {
      lua_pop(L, 3);
      json_decref(obj);
      return NULL;
    }
    lua_pop(L, 2);
  }
  return obj;
}

static json_t *convert(lua_State *L, int idx, int depth, const char **err) {
  if (depth > MAX_DEPTH) {
    *err = "nesting too deep (or a cycle)";
    return NULL;
  }
  luaL_checkstack(L, 6, "JSON nesting");
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    return json_null();
  case LUA_TBOOLEAN:
    return json_boolean(lua_toboolean(L, idx));
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) return json_integer((json_int_t)lua_tointeger(L, idx));
    if (!isfinite(lua_tonumber(L, idx))) {
      *err = "JSON has no NaN or infinity";
      return NULL;
    }
    return json_real(lua_tonumber(L, idx));
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    json_t *str = json_stringn(s, len);
    if (!str) *err = "strings must be valid UTF-8";
    return str;
  }
  case LUA_TTABLE:
    return convert_table(L, idx, depth, err);
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) return json_null();
    /* fall through */
  default:
    *err = "values of this type cannot be JSON";
    return NULL;
  }
}

json_t *ffdl_ljson_from_lua(lua_State *L, int idx, const char **err) {
  *err = NULL;
  return convert(L, lua_absindex(L, idx), 0, err);
}

void ffdl_ljson_push_object(lua_State *L, const json_t *object, int extra) {
  lua_createtable(L, 0, (int)json_object_size(object) + extra);
  const char *key;
  json_t *item;
  json_object_foreach((json_t *)object, key, item) {
    ffdl_ljson_push(L, item);
    lua_setfield(L, -2, key);
  }
}

void ffdl_ljson_push(lua_State *L, const json_t *value) {
  luaL_checkstack(L, 4, "JSON nesting");
  switch (json_typeof(value)) {
  case JSON_OBJECT:
    ffdl_ljson_push_object(L, value, 0);
    break;
  case JSON_ARRAY: {
    size_t i;
    json_t *item;
    lua_createtable(L, (int)json_array_size(value), 0);
    json_array_foreach(value, i, item) {
      ffdl_ljson_push(L, item);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  }
  case JSON_STRING:
    lua_pushlstring(L, json_string_value(value), json_string_length(value));
    break;
  case JSON_INTEGER:
    lua_pushinteger(L, (lua_Integer)json_integer_value(value));
    break;
  case JSON_REAL:
    lua_pushnumber(L, json_real_value(value));
    break;
  case JSON_TRUE:
  case JSON_FALSE:
    lua_pushboolean(L, json_is_true(value));
    break;
  default:
    lua_pushlightuserdata(L, NULL);
  }
}

/* Holds a jansson value for the length of one Lua call, so that a Lua
 * error (out of memory) cannot leak it. __gc and release are one function. */
static int json_box_gc(lua_State *L) {
  json_t **box = lua_touserdata(L, 1);
  json_decref(*box);
  *box = NULL;
  return 0;
}

static json_t **push_json_box(lua_State *L) {
  json_t **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  if (luaL_newmetatable(L, "ffdl.JsonBox")) {
    lua_pushcfunction(L, json_box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return box;
}

int ffdl_ljson_encode(lua_State *L) {
  luaL_checkany(L, 1);
  int pretty = 0;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "pretty");
    pretty = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_settop(L, 1);
  json_t **box = push_json_box(L);
  const char *err;
  *box = ffdl_ljson_from_lua(L, 1, &err);
  if (!*box) {
    lua_pushnil(L);
    lua_pushstring(L, err ? err : "out of memory");
    return 2;
  }
  size_t flags = JSON_ENCODE_ANY | JSON_SORT_KEYS | (pretty ? JSON_INDENT(2) : JSON_COMPACT);
  /* dump straight into a Lua buffer: no C allocation to leak on error */
  size_t need = json_dumpb(*box, NULL, 0, flags);
  if (need == 0) return luaL_error(L, "cannot encode JSON");
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, need);
  json_dumpb(*box, out, need, flags);
  luaL_pushresultsize(&b, need);
  return 1;
}

int ffdl_ljson_decode(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  json_t **box = push_json_box(L);
  json_error_t jerr;
  *box = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
  if (!*box) {
    lua_pushnil(L);
    lua_pushfstring(L, "line %d, column %d: %s", jerr.line, jerr.column, jerr.text);
    return 2;
  }
  ffdl_ljson_push(L, *box);
  return 1;
}
