/* Where the runtime's Lua and the default policies live. */
#ifndef FFDL_APP_PATHS_H
#define FFDL_APP_PATHS_H

/* FFDL_LUA_DIR from the environment, else the build-time default. */
const char *ffdl_paths_lua_dir(void);
/* ./policies when it exists, else the policies shipped with the build. */
const char *ffdl_paths_default_policies(void);

/* The ffdl checkout or install root ($FFDL_ROOT, else the build's source):
 * relative interpreter paths in frameworks.lua resolve against it. */
const char *ffdl_paths_root(void);

#endif
