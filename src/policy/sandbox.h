/*
 * The policy sandbox: a Lua 5.4 state with a memory cap, a per-call deadline,
 * and an environment without io, os, package, debug, load or dofile.
 */
#ifndef FFDL_POLICY_SANDBOX_H
#define FFDL_POLICY_SANDBOX_H

#include <lua.h>
#include <stddef.h>

typedef struct ffdl_sandbox ffdl_sandbox;

/* The hooks that get a deadline of their own, by the WHAT name of
 * ffdl_policy_call. */
typedef enum {
  FFDL_HOOK_VALIDATE,
  FFDL_HOOK_ADMIT,
  FFDL_HOOK_ORDER,
  FFDL_HOOK_RANK,
  FFDL_HOOK_PLACE,
  FFDL_HOOK_HOLD,
  FFDL_HOOK_ON_FAILURE,
  FFDL_HOOK_COUNT /* also the index of "any other call" where one is needed */
} ffdl_hook;

/* The hook NAME names ("retry" is on_failure), or -1. */
int ffdl_hook_from_name(const char *name);
/* "validate", ..., "on_failure"; "other" for FFDL_HOOK_COUNT (static). */
const char *ffdl_hook_name(int hook);

/* Limits of one sandbox, that is of one generation. A zero field means the
 * process default (ffdl_sandbox_set_defaults), else the built-in one. */
typedef struct {
  size_t memory_limit; /* bytes the state may hold; built-in 64 MiB */
  double deadline_ms;  /* per call, for calls without a hook deadline; built-in 1000 ms */
  double hook_deadline_ms[FFDL_HOOK_COUNT]; /* per hook; built-in: place 50 ms, else deadline_ms */
} ffdl_sandbox_limits;

/* Sets the defaults for the zero fields of every sandbox created after
 * this call (LIMITS is copied; NULL restores the built-in ones). Call it at
 * start-up, before any other thread creates sandboxes. */
void ffdl_sandbox_set_defaults(const ffdl_sandbox_limits *limits);

/* Calls made on this thread from now on measure their deadlines in the
 * thread's CPU time, not wall time: for a thread that runs at the lowest
 * priority (the reload builder), where a busy machine would otherwise turn
 * a policy that needs 100 ms into one that "exceeded its deadline". */
void ffdl_sandbox_deadlines_in_cpu_time(void);

/*
 * Pushes T[KEY], T at IDX, without metamethods, and returns its type. The
 * runtime reads tables a policy made (its module, its config, what a hook
 * returned) outside any policy call, where a metamethod would run with no
 * deadline and an error in it would end the process: it reads them raw.
 */
static inline int ffdl_raw_field(lua_State *L, int idx, const char *key) {
  idx = lua_absindex(L, idx);
  lua_pushstring(L, key);
  return lua_rawget(L, idx);
}

/* Creates a sandbox (caller frees with ffdl_sandbox_free). */
int ffdl_sandbox_new(const ffdl_sandbox_limits *limits, ffdl_sandbox **out);
void ffdl_sandbox_free(ffdl_sandbox *sb);
/* Borrowed: the state stays owned by the sandbox. */
lua_State *ffdl_sandbox_state(ffdl_sandbox *sb);
size_t ffdl_sandbox_memory_used(const ffdl_sandbox *sb);
size_t ffdl_sandbox_memory_limit(const ffdl_sandbox *sb);
double ffdl_sandbox_default_deadline(const ffdl_sandbox *sb);
/* The deadline a call named WHAT gets when its caller passes <= 0. */
double ffdl_sandbox_deadline_for(const ffdl_sandbox *sb, const char *what);
/* Names the sandbox in limit events, e.g. by its generation's hash (copied;
 * at most 64 characters are kept). */
void ffdl_sandbox_set_label(ffdl_sandbox *sb, const char *label);

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
 * (<= 0: the deadline configured for the hook WHAT, else the sandbox's
 * default; see ffdl_sandbox_deadline_for).
 * WHAT names the call for the log and the limits ("validate", "place", ...).
 * On failure the function and arguments are popped, nothing is pushed,
 * *err holds "file:line: message" (caller frees), the traceback goes to
 * the log, and the return value is FFDL_ELUA, FFDL_ETIMEOUT or FFDL_ELIMIT.
 * FFDL_ETIMEOUT and FFDL_ELIMIT (the memory cap) are also recorded as a
 * limit event (policy/limits.h): a WARN line, a counter, the recent list.
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
/* Copies the process-wide histogram into *OUT; safe from any thread. */
void ffdl_policy_call_latency(ffdl_latency *out);

#endif
