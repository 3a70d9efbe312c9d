/* The `ffdl` Lua module as the sandbox sees it: json, yaml, log, time. */
#ifndef FFDL_POLICY_LUAAPI_H
#define FFDL_POLICY_LUAAPI_H

#include <lua.h>

/* Pushes a new table with the module's functions.  [-0, +1, m] */
void ffdl_luaapi_push(lua_State *L);

#endif
