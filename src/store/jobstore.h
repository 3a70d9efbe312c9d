/*
 * The job store: one SQLite file in WAL mode holding jobs, their state
 * transitions, learners and metrics. Every transition is one transaction
 * (ffdl_jobstore_transition_many, for a whole queue at once, is the one
 * exception).
 */
#ifndef FFDL_STORE_JOBSTORE_H
#define FFDL_STORE_JOBSTORE_H

#include <jansson.h>
#include <stdint.h>

typedef struct ffdl_jobstore ffdl_jobstore;

/* Opens (creating when needed) the store at PATH, creating parent
 * directories. Caller closes. On failure *err says why (caller frees). */
int ffdl_jobstore_open(const char *path, ffdl_jobstore **out, char **err);
void ffdl_jobstore_close(ffdl_jobstore *st);

/* Inserts a job in state QUEUED with a first transition.
 * SPEC (borrowed) is stored as JSON with secrets kept: the store file is
 * the platform's own (mode 0600). */
int ffdl_jobstore_create(ffdl_jobstore *st, const char *id, const json_t *spec, int64_t now_ms);

/* Moves job ID to STATUS in one transaction: updates the job row and
 * appends a transition (status, time, reason, error code). REASON and
 * ERROR_CODE may be NULL. A terminal status (COMPLETED, FAILED, HALTED)
 * also sets the completion time. */
int ffdl_jobstore_transition(ffdl_jobstore *st, const char *id, const char *status,
                             const char *reason, const char *error_code, int64_t now_ms);

/* Moves the N jobs of IDS (borrowed) to STATUS, all with the same REASON
 * and ERROR_CODE, in one transaction: every job moves, or (on failure, e.g.
 * FFDL_ENOENT for an id not in the store) none does. The one exception to
 * one transaction per transition, for halting a whole queue at shutdown. */
int ffdl_jobstore_transition_many(ffdl_jobstore *st, const char *const *ids, size_t n,
                                  const char *status, const char *reason, const char *error_code,
                                  int64_t now_ms);

/* Records or updates learner N (1-based) of job ID for ATTEMPT. Pass
 * exit_code = -1 and signal = 0 while it runs. STATUS: RUNNING, COMPLETED,
 * FAILED, HALTED. */
int ffdl_jobstore_learner(ffdl_jobstore *st, const char *id, int learner, int attempt, int pid,
                          const char *status, int exit_code, int signal, int64_t now_ms);

/* Appends one metrics record (borrowed JSON object) for job ID. */
int ffdl_jobstore_add_metric(ffdl_jobstore *st, const char *id, const json_t *record);

/* Stores free-form JSON (borrowed) under KEY for job ID (e.g. "results_dir",
 * "placement"); replaces an earlier value. */
int ffdl_jobstore_set_extra(ffdl_jobstore *st, const char *id, const char *key,
                            const json_t *value);

/* Appends a policy decision (borrowed JSON object: time_ms, generation,
 * hook, outcome, reason, explanations) to job ID's decision log. */
int ffdl_jobstore_add_decision(ffdl_jobstore *st, const char *id, const json_t *decision);
/* The decision log of job ID, oldest first (caller decrefs). */
json_t *ffdl_jobstore_decisions(ffdl_jobstore *st, const char *id);

/* Every job of USER (NULL: all), newest first, with the spec and status
 * fields of ffdl_jobstore_get but no transitions, learners or metrics: one
 * query for the API's job list (caller decrefs). */
json_t *ffdl_jobstore_list_with_specs(ffdl_jobstore *st, const char *user);

/* Deletes the metrics records of job ID (they are read again from its log). */
int ffdl_jobstore_delete_metrics(ffdl_jobstore *st, const char *id);

/* Deletes job ID with its transitions, learners and metrics. */
int ffdl_jobstore_delete(ffdl_jobstore *st, const char *id);

/*
 * The whole job as a new JSON object (caller decrefs), or NULL when there
 * is no such job:
 * {id, name, user, team, framework, status, error_code, status_message,
 *  submitted_ms, completed_ms, spec, transitions: [{status, time_ms,
 *  reason, error_code}], learners: [{learner, attempt, pid, status,
 *  exit_code, signal, started_ms, ended_ms}], metrics: [...], extra: {...}}
 */
json_t *ffdl_jobstore_get(ffdl_jobstore *st, const char *id);

/* Every job, newest first, without transitions/learners/metrics/spec
 * (caller decrefs): [{id, name, user, framework, status, submitted_ms,
 * completed_ms, error_code}] */
json_t *ffdl_jobstore_list(ffdl_jobstore *st);

/* Seconds per transition write in this process: {count, sum, max}. */
void ffdl_jobstore_write_latency(unsigned long *count, double *sum, double *max);

#endif
