/*
 * luaapi.c: the pure part of the `ffdl` Lua module, safe inside the sandbox.
 * Owns: ffdl.json, ffdl.yaml, ffdl.log, ffdl.now. Must not: touch files,
 * processes or the network (job scripts get those from a richer module).
 */
#include "policy/luaapi.h"
#include "core/log.h"
#include "policy/ljson.h"
#include "policy/lyaml.h"

#include <lauxlib.h>
#include <string.h>
#include <time.h>

static int l_log(lua_State *L) {
  static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
  int level = luaL_checkoption(L, 1, "info", levels);
  const char *msg = luaL_checkstring(L, 2);
  lua_Debug ar;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
    ffdl_log((ffdl_log_level)level, "%s:%d: %s", ar.short_src, ar.currentline, msg);
  else
    ffdl_log((ffdl_log_level)level, "%s", msg);
  return 0;
}

/* Wall-clock seconds since the epoch, with sub-second precision. */
static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

static int l_monotonic(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

static const luaL_Reg json_funcs[] = {
    {"encode", ffdl_ljson_encode}, {"decode", ffdl_ljson_decode}, {NULL, NULL}};
static const luaL_Reg yaml_funcs[] = {{"decode", ffdl_lyaml_decode}, {NULL, NULL}};
static const luaL_Reg module_funcs[] = {
    {"log", l_log}, {"now", l_now}, {"monotonic", l_monotonic}, {NULL, NULL}};

void ffdl_luaapi_push(lua_State *L) {
  luaL_newlib(L, module_funcs);
  luaL_newlib(L, json_funcs);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_setfield(L, -2, "json");
  luaL_newlib(L, yaml_funcs);
  lua_setfield(L, -2, "yaml");
}
