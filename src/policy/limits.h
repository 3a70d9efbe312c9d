/*
 * Policy limits: their configuration (a memory cap per generation and a
 * deadline per hook call), and the record of the calls that hit one.
 */
#ifndef FFDL_POLICY_LIMITS_H
#define FFDL_POLICY_LIMITS_H

#include "policy/sandbox.h"

#include <jansson.h>

/*
 * Fills *LIMITS from CONFIG (borrowed), a parsed configuration object:
 *   {memory_mb: N, deadline_ms: {default: N, validate: N, admit: N, order: N,
 *    rank: N, place: N, hold: N, on_failure: N}}       ("retry" = on_failure)
 * Every field is optional; what CONFIG leaves out keeps its value in
 * *LIMITS. Numbers must be positive: memory_mb at least 1 and at most
 * 65536, a deadline at most 60000 ms.
 * NAME names CONFIG in field paths (for example "policy_limits").
 * Returns 0, or FFDL_EINVALID with *LIMITS untouched, *FIELD the path of
 * the offending field ("policy_limits.deadline_ms.plac") and *ERR what is
 * wrong with it (both caller frees).
 */
int ffdl_policy_limits_from_json(const json_t *config, const char *name,
                                 ffdl_sandbox_limits *limits, char **field, char **err);

typedef enum { FFDL_LIMIT_DEADLINE, FFDL_LIMIT_MEMORY, FFDL_LIMIT_KIND_COUNT } ffdl_limit_kind;
/* "deadline" or "memory" (static). */
const char *ffdl_limit_kind_name(ffdl_limit_kind kind);

/*
 * Records that the call WHAT hit a limit: a WARN log line, the counter of
 * (hook, kind), and an entry in the list of recent events. LIMIT and VALUE
 * are milliseconds for a deadline (the deadline, the time the call ran)
 * and bytes for memory (the cap, the size the state asked to reach).
 * GENERATION (may be NULL) and MESSAGE are copied. Safe from any thread;
 * ffdl_policy_call calls it.
 */
void ffdl_policy_limit_event(const char *what, const char *generation, ffdl_limit_kind kind,
                             double limit, double value, const char *message);

/* Calls of HOOK (an ffdl_hook, or FFDL_HOOK_COUNT for calls that are not
 * hooks) that hit a limit of KIND, since the start. Any thread. */
unsigned long ffdl_policy_limit_exceeded(int hook, ffdl_limit_kind kind);

/* How many recent events ffdl_policy_limit_events keeps. */
#define FFDL_LIMIT_EVENTS_KEPT 20
/* The most recent events, oldest first, as a new array (caller decrefs) of
 * {at_ms, hook, generation, limit, max, value, unit, error}. Any thread. */
json_t *ffdl_policy_limit_events(void);

#endif
