/*
 * paths.c: finds lua/ and policies/ for the command-line programs.
 * Owns: the lookup order. Must not: load anything.
 */
#include "app/paths.h"
#include "core/file.h"

#include <stdlib.h>

const char *ffdl_paths_lua_dir(void) {
  const char *env = getenv("FFDL_LUA_DIR");
  return env && *env ? env : FFDL_LUA_DIR;
}

const char *ffdl_paths_default_policies(void) {
  const char *env = getenv("FFDL_POLICIES");
  if (env && *env) return env;
  return ffdl_file_is_dir("policies") ? "policies" : FFDL_POLICIES_DIR;
}

const char *ffdl_paths_root(void) {
  const char *env = getenv("FFDL_ROOT");
  return env && *env ? env : FFDL_SOURCE_DIR;
}
