/* Where the runtime's Lua and the default policies live. */
#ifndef FFDL_APP_PATHS_H
#define FFDL_APP_PATHS_H

/* FFDL_LUA_DIR from the environment, else the build-time default. */
const char *ffdl_paths_lua_dir(void);
/* ./policies when it exists, else the policies shipped with the build. */
const char *ffdl_paths_default_policies(void);

#endif
