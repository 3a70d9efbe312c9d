/*
 * The policy sandbox: a Lua 5.4 state with a memory cap, a per-call deadline,
 * and an environment without io, os, package, debug, load or dofile.
 */
#ifndef FFDL_POLICY_SANDBOX_H
#define FFDL_POLICY_SANDBOX_H

#include <lua.h>
#include <stddef.h>

typedef struct ffdl_sandbox ffdl_sandbox;

typedef struct {
  size_t memory_limit; /* bytes the state may hold; 0 means the default (64 MiB) */
  double deadline_ms;  /* default per-call deadline; 0 means the default (1000 ms) */
} ffdl_sandbox_limits;

/* Creates a sandbox (caller frees with ffdl_sandbox_free). */
int ffdl_sandbox_new(const ffdl_sandbox_limits *limits, ffdl_sandbox **out);
void ffdl_sandbox_free(ffdl_sandbox *sb);
/* Borrowed: the state stays owned by the sandbox. */
lua_State *ffdl_sandbox_state(ffdl_sandbox *sb);
size_t ffdl_sandbox_memory_used(const ffdl_sandbox *sb);
double ffdl_sandbox_default_deadline(const ffdl_sandbox *sb);

/*
 * Pushes a fresh environment table for one chunk: every name of the base
 * environment is visible, and writes stay in this table.  [-0, +1, m]
 */
void ffdl_sandbox_push_env(lua_State *L);

/*
 * Loads TEXT (text only, never bytecode) as chunk NAME ("@file" style names
 * give file:line messages), gives it the environment at the top of the stack
 * (popped), and pushes the function.  [-1, +1, -]
 * On failure pushes nothing and returns FFDL_ESYNTAX with *err set
 * (caller frees).
 */
int ffdl_sandbox_load(ffdl_sandbox *sb, const char *name, const char *text, size_t len, char **err);

/*
 * The one entry point into Lua for policy and runtime code. Calls the
 * function below NARGS arguments, leaving NRES results, with a traceback
 * handler, the memory cap and a wall-clock deadline of DEADLINE_MS
 * (<= 0: the sandbox's default).
 * WHAT names the call for the log ("validate", "place", ...).
 * On failure the function and arguments are popped, nothing is pushed,
 * *err holds "file:line: message" (caller frees), the traceback goes to
 * the log, and the return value is FFDL_ELUA, FFDL_ETIMEOUT or FFDL_ELIMIT.
 */
int ffdl_policy_call(ffdl_sandbox *sb, const char *what, int nargs, int nres, double deadline_ms,
                     char **err);

/* Latency of every ffdl_policy_call in this process, for /metrics:
 * BUCKETS[i] counts calls of at most FFDL_LATENCY_BOUNDS[i] seconds. */
#define FFDL_LATENCY_BUCKET_COUNT 8
extern const double FFDL_LATENCY_BOUNDS[FFDL_LATENCY_BUCKET_COUNT];
typedef struct {
  unsigned long buckets[FFDL_LATENCY_BUCKET_COUNT], count;
  double sum;
} ffdl_latency;
void ffdl_latency_observe(ffdl_latency *h, double seconds);
const ffdl_latency *ffdl_policy_call_latency(void);

#endif
