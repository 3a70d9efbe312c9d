/*
 * luapool.h: a small-object allocator for one Lua state.
 * Owns: free lists by size class and the slabs they are carved from.
 * Must not: be shared by two threads at once (a sandbox is used by one
 * thread at a time, and so is its pool).
 */
#ifndef FFDL_POLICY_LUAPOOL_H
#define FFDL_POLICY_LUAPOOL_H

#include <stddef.h>

typedef struct ffdl_luapool ffdl_luapool;

ffdl_luapool *ffdl_luapool_new(void);
/* Frees every slab: only once the Lua state using it is closed. */
void ffdl_luapool_free(ffdl_luapool *pool);

/* Lua's allocator contract (lua_Alloc) without the cap: PTR of OSIZE
 * bytes becomes NSIZE bytes (NULL when NSIZE is 0, or out of memory, in
 * which case PTR is untouched). OSIZE must be 0 when PTR is NULL. */
void *ffdl_luapool_realloc(ffdl_luapool *pool, void *ptr, size_t osize, size_t nsize);

#endif
