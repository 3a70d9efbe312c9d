/* YAML to Lua, keeping the line and column of every node. */
#ifndef FFDL_POLICY_LYAML_H
#define FFDL_POLICY_LYAML_H

#include <lua.h>

/*
 * ffdl.yaml.decode(text) -> doc, positions | nil, err
 *   positions[path] = {line=, col=, kline=, kcol=, raw=}: path is "a.b[0].c"
 *   (root ""), line/col point at the value and kline/kcol at its key;
 *   raw is a scalar's text as written. err = {line=, col=, path=, message=}.
 * Duplicate keys, unknown aliases, more than one document, nesting deeper
 * than 64 and more than 100000 nodes (aliases counted expanded) are errors.
 */
int ffdl_lyaml_decode(lua_State *L);

#endif
