/*
 * The live policy generation of a server, and safe hot reload: a new
 * generation is compiled, passes the conformance checks and the policy
 * tests, and only then replaces the old one. A rejected reload keeps the
 * current generation and records why.
 *
 * The build runs on a builder thread at the lowest CPU priority, in Lua
 * states nothing else can reach yet; only the swap runs on the loop,
 * between two callbacks, so no hook call is ever in flight on the
 * generation being replaced.
 */
#ifndef FFDL_POLICY_RELOAD_H
#define FFDL_POLICY_RELOAD_H

#include "policy/generation.h"

#include <jansson.h>
#include <uv.h>

typedef struct ffdl_policies ffdl_policies;

/* Called on the loop right after a swap. NOW and OLD are borrowed; OLD
 * must not be used after the callback returns (it is then closed on the
 * builder thread). */
typedef void (*ffdl_policies_swap_cb)(void *ud, ffdl_generation *now, ffdl_generation *old);

/* Called on the loop when a requested reload has finished: RC is 0 when the
 * new generation is active (or nothing changed). A rejection gives an
 * FFDL_E* code and ERR (borrowed, valid during the call, never NULL) with
 * the file and line. ERR is NULL only when ffdl_policies_free came first
 * (RC is then FFDL_EIO). */
typedef void (*ffdl_policies_done_cb)(void *ud, int rc, const char *err);

/* Loads and checks the first generation on the calling thread (before the
 * loop runs). The caller frees *out with ffdl_policies_free, and *err on
 * failure. */
int ffdl_policies_open(uv_loop_t *loop, const ffdl_generation_opts *opts,
                       ffdl_policies_swap_cb on_swap, void *ud, ffdl_policies **out, char **err);
/* Stops watching and reloading. Memory goes once the loop has run the last
 * close or after-work callback; waiting callers get FFDL_EIO. */
void ffdl_policies_free(ffdl_policies *p);
/* Borrowed: valid until the next swap. */
ffdl_generation *ffdl_policies_active(ffdl_policies *p);

/* Asks for a reload and returns at once: the new generation is built and
 * checked on the builder thread, then swapped in on the loop. DONE (may be
 * NULL) gets the result. A request made while a build runs is served by
 * one more build after it, shared by every request made meanwhile, so
 * that the answer reflects the files as they were when it was asked for.
 * Returns 0, or FFDL_EIO once ffdl_policies_free has been called (DONE is
 * then not called). */
int ffdl_policies_reload(ffdl_policies *p, ffdl_policies_done_cb done, void *ud);
/* Reloads on any change in the policy directory, debounced (DEBOUNCE_MS). */
int ffdl_policies_watch(ffdl_policies *p, unsigned debounce_ms);
/* {hash, files: [{name, sha256}], loaded_ms, reloads, failures, last_error,
 *  directory, building, swaps, last_build_ms, last_reload_ms, max_reload_ms,
 *  last_swap_pause_us, max_swap_pause_us, last_swap_cpu_us, max_swap_cpu_us,
 *  lua_bytes, ...} (caller decrefs) */
json_t *ffdl_policies_status(ffdl_policies *p);
unsigned long ffdl_policies_failures(const ffdl_policies *p);

/* Timings of the reloads so far, for /metrics. */
typedef struct {
  unsigned long swaps;      /* generations swapped in after the first */
  double last_swap_pause_s; /* loop time of the last swap */
  double max_swap_pause_s;  /* the longest swap */
  double last_reload_s;     /* trigger (file event or request) to active */
  double max_reload_s;      /* the longest of those */
  double last_build_s;      /* builder time of the last build */
  double last_swap_cpu_s;   /* loop thread CPU time of the last swap */
  double max_swap_cpu_s;    /* the most of those */
} ffdl_policies_timings;
void ffdl_policies_timings_get(const ffdl_policies *p, ffdl_policies_timings *out);

/* Only the hook checks (presence and return shapes). */
int ffdl_policies_check_hooks(ffdl_generation *gen, char **err);

/* Checks a loaded generation: hooks present with the right shapes, then its
 * tests (DIR/tests). 0 or FFDL_EINVALID with *err (caller frees). */
int ffdl_policies_check(ffdl_generation *gen, const char *dir, char **err);

#endif
