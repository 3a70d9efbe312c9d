/* JSON <-> Lua through jansson. */
#ifndef FFDL_POLICY_LJSON_H
#define FFDL_POLICY_LJSON_H

#include <jansson.h>
#include <lua.h>

/*
 * Converts the Lua value at IDX to a new jansson value (caller decrefs).
 * A table is an array when its keys are exactly 1..n (n > 0) or when its
 * metatable has __jsontype = "array"; otherwise an object with string keys.
 * Returns NULL with *err set (static text) for functions, cycles, deep
 * nesting, non-finite numbers or non-string keys.
 */
json_t *ffdl_ljson_from_lua(lua_State *L, int idx, const char **err);

/* Pushes a Lua value for VALUE (borrowed); JSON null becomes ffdl.json.null
 * (a light userdata).  [-0, +1, m] */
void ffdl_ljson_push(lua_State *L, const json_t *value);

/* Pushes the JSON object OBJECT (borrowed) as a table with room for EXTRA
 * more fields, which the caller adds without a rehash.  [-0, +1, m] */
void ffdl_ljson_push_object(lua_State *L, const json_t *object, int extra);

/* Lua: ffdl.json.encode(v [, {pretty=true}]) -> string | nil, err */
int ffdl_ljson_encode(lua_State *L);
/* Lua: ffdl.json.decode(text) -> value | nil, err ("line L, column C: ...") */
int ffdl_ljson_decode(lua_State *L);

#endif
