/*
 * The live policy generation of a server, and safe hot reload: a new
 * generation is compiled, passes the conformance checks and the policy
 * tests, and only then replaces the old one. A rejected reload keeps the
 * current generation and records why.
 */
#ifndef FFDL_POLICY_RELOAD_H
#define FFDL_POLICY_RELOAD_H

#include "policy/generation.h"

#include <jansson.h>
#include <uv.h>

typedef struct ffdl_policies ffdl_policies;

/* Called after a swap; OLD is freed when the callback returns. */
typedef void (*ffdl_policies_swap_cb)(void *ud, ffdl_generation *now, ffdl_generation *old);

/* Loads and checks the first generation (caller frees with ffdl_policies_free). */
int ffdl_policies_open(uv_loop_t *loop, const ffdl_generation_opts *opts,
                       ffdl_policies_swap_cb on_swap, void *ud, ffdl_policies **out, char **err);
void ffdl_policies_free(ffdl_policies *p);
/* Borrowed: valid until the next swap. */
ffdl_generation *ffdl_policies_active(ffdl_policies *p);
/* Builds, checks and (on success) swaps in a new generation. On failure
 * returns non-zero with *err (caller frees): file, line and reason. */
int ffdl_policies_reload(ffdl_policies *p, char **err);
/* Reloads on any change in the policy directory, debounced (DEBOUNCE_MS). */
int ffdl_policies_watch(ffdl_policies *p, unsigned debounce_ms);
/* {hash, files: [{name, sha256}], loaded_ms, reloads, failures, last_error} */
json_t *ffdl_policies_status(ffdl_policies *p);
unsigned long ffdl_policies_failures(const ffdl_policies *p);

/* Only the hook checks (presence and return shapes). */
int ffdl_policies_check_hooks(ffdl_generation *gen, char **err);

/* Checks a loaded generation: hooks present with the right shapes, then its
 * tests (DIR/tests). 0 or FFDL_EINVALID with *err (caller frees). */
int ffdl_policies_check(ffdl_generation *gen, const char *dir, char **err);

#endif
