/*
 * A generation: the policy files and the runtime's own Lua compiled into one
 * sandbox, named by the SHA-256 of their names and contents.
 */
#ifndef FFDL_POLICY_GENERATION_H
#define FFDL_POLICY_GENERATION_H

#include "policy/sandbox.h"

#include <jansson.h>

typedef struct ffdl_generation ffdl_generation;

typedef struct {
  const char *policies_dir; /* team hooks: validate.lua, frameworks.lua, ... */
  const char *lua_dir;      /* the runtime's Lua: every .lua file in lua/ffdl */
  ffdl_sandbox_limits limits;
} ffdl_generation_opts;

/* Compiles and runs every file (caller frees *out with ffdl_generation_free).
 * On failure *err names the file and line (caller frees). */
int ffdl_generation_load(const ffdl_generation_opts *opts, ffdl_generation **out, char **err);
void ffdl_generation_free(ffdl_generation *gen);

/* Borrowed pointers, valid while the generation lives. */
ffdl_sandbox *ffdl_generation_sandbox(ffdl_generation *gen);
const char *ffdl_generation_hash(const ffdl_generation *gen);
const char *ffdl_generation_policies_dir(const ffdl_generation *gen);
/* [{name, sha256}] of the policy files (borrowed). */
json_t *ffdl_generation_files(const ffdl_generation *gen);

/* Push the table a policy file (e.g. "validate") or runtime module
 * (e.g. "manifest") returned, or nil when there is none.  [-0, +1, -] */
void ffdl_generation_push_policy(ffdl_generation *gen, const char *name);
void ffdl_generation_push_runtime(ffdl_generation *gen, const char *name);
/* Pushes the table of every policy module, by file name.  [-0, +1, -] */
void ffdl_generation_push_policies(ffdl_generation *gen);

/* Pushes a fresh ctx table for a hook call: ctx.now, ctx.log, ctx:explain,
 * ctx.defaults, ctx.frameworks, plus ctx.file when FILE is not NULL.
 * [-0, +1, m] */
void ffdl_generation_push_ctx(ffdl_generation *gen, const char *file);

/* The messages hooks recorded with ctx:explain() since the last call of
 * this function, as a new JSON array (caller decrefs). */
json_t *ffdl_generation_take_explanations(ffdl_generation *gen);
/* Forgets those messages, for a decision nobody keeps. */
void ffdl_generation_drop_explanations(ffdl_generation *gen);

#endif
