/*
 * luapool.c: a small-object allocator for one Lua state.
 *
 * Why: a placement makes a dozen short-lived Lua objects (tables, node
 * proxies, iterators), and the collector frees them in bursts. glibc's
 * malloc sends most of those frees past its per-thread cache into bins
 * it must later sort and consolidate; that cost about a sixth of the
 * scheduling cycle's time. Here blocks of up to MAX_SMALL bytes come from
 * free lists, one per 16-byte size class, refilled from 64 KiB slabs; a
 * freed block goes back on its list. Larger blocks go to malloc.
 *
 * The pool keeps what it has carved until the state is closed, so its
 * footprint is the peak of live small objects (which the sandbox's cap
 * bounds). Under AddressSanitizer every block goes to malloc, so that a
 * use after free still shows.
 */
#include "policy/luapool.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define POOL_ENABLED 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_ENABLED 0
#endif
#endif
#ifndef POOL_ENABLED
#define POOL_ENABLED 1
#endif

#define GRANULE 16
#define MAX_SMALL 1024
#define CLASSES (MAX_SMALL / GRANULE)
#define SLAB_BYTES (64 * 1024)

typedef struct free_block {
  struct free_block *next;
} free_block;

typedef struct slab {
  struct slab *next;
  /* blocks follow, aligned to GRANULE */
} slab;

#define SLAB_HEADER ((sizeof(slab) + GRANULE - 1) / GRANULE * GRANULE)

struct ffdl_luapool {
  free_block *free[CLASSES];
  slab *slabs;
  char *carve, *carve_end; /* the unused rest of the newest slab */
};

ffdl_luapool *ffdl_luapool_new(void) {
  return calloc(1, sizeof(ffdl_luapool));
}

void ffdl_luapool_free(ffdl_luapool *pool) {
  if (!pool) return;
  for (slab *s = pool->slabs, *next; s; s = next) {
    next = s->next;
    free(s);
  }
  free(pool);
}

static int is_small(size_t size) {
  return POOL_ENABLED && size > 0 && size <= MAX_SMALL;
}

static size_t class_of(size_t size) {
  return (size - 1) / GRANULE;
}

/* A block of class C, from its free list or carved from a slab. */
static void *take(ffdl_luapool *pool, size_t c) {
  free_block *b = pool->free[c];
  if (b) {
    pool->free[c] = b->next;
    /* freed blocks are cold (the collector freed them a while ago): start
     * loading the next one now rather than stall on it at the next take */
    if (b->next) __builtin_prefetch(b->next);
    return b;
  }
  size_t bytes = (c + 1) * GRANULE;
  if ((size_t)(pool->carve_end - pool->carve) < bytes) {
    /* the rest of the old slab is too small for this class: give it to
     * the classes it fits, so that nothing carved is lost */
    while ((size_t)(pool->carve_end - pool->carve) >= GRANULE) {
      size_t rest = (size_t)(pool->carve_end - pool->carve);
      size_t fit = class_of(rest > MAX_SMALL ? MAX_SMALL : rest / GRANULE * GRANULE);
      free_block *spare = (free_block *)pool->carve;
      spare->next = pool->free[fit];
      pool->free[fit] = spare;
      pool->carve += (fit + 1) * GRANULE;
    }
    slab *s = malloc(SLAB_BYTES);
    if (!s) return NULL;
    s->next = pool->slabs;
    pool->slabs = s;
    pool->carve = (char *)s + SLAB_HEADER;
    pool->carve_end = (char *)s + SLAB_BYTES;
  }
  void *block = pool->carve;
  pool->carve += bytes;
  return block;
}

static void give_back(ffdl_luapool *pool, void *ptr, size_t size) {
  free_block *b = ptr;
  size_t c = class_of(size);
  b->next = pool->free[c];
  pool->free[c] = b;
}

void *ffdl_luapool_realloc(ffdl_luapool *pool, void *ptr, size_t osize, size_t nsize) {
  int was_small = ptr && is_small(osize), now_small = is_small(nsize);
  if (nsize == 0) {
    if (was_small)
      give_back(pool, ptr, osize);
    else
      free(ptr);
    return NULL;
  }
  if (!was_small && !now_small) return realloc(ptr, nsize);
  if (was_small && now_small && class_of(osize) == class_of(nsize)) return ptr;
  void *fresh = now_small ? take(pool, class_of(nsize)) : malloc(nsize);
  /* Lua counts on a shrink never failing: the old, larger block serves
   * (when freed later it joins a smaller class, which it more than fills) */
  if (!fresh) return ptr && nsize <= osize ? ptr : NULL;
  if (ptr) {
    memcpy(fresh, ptr, osize < nsize ? osize : nsize);
    if (was_small)
      give_back(pool, ptr, osize);
    else
      free(ptr);
  }
  return fresh;
}
