/*
 * Replays a workload trace on a simulated cluster in virtual time, through
 * the same scheduling cycle (sched.c) and policy hooks as the server.
 */
#ifndef FFDL_ORCH_SIMULATE_H
#define FFDL_ORCH_SIMULATE_H

#include "policy/generation.h"

#include <jansson.h>

/*
 * Runs TRACE_CSV (columns submit_s,name,user,team,learners,gpus,cpus,
 * memory,gpu_type,duration_s,priority; more are allowed) on the nodes of
 * CLUSTER_YAML with the hooks of GEN. *RESULT (caller decrefs) holds the
 * figures (jobs, completed, never_fit, unscheduled, makespan_s,
 * mean_queue_s, p95_queue_s, mean_jct_s, gpu_utilization, cpu_utilization,
 * share_by_team, placements, placements_per_s, cycles, wall_s, generation)
 * and "per_job": [{row, name, team, status, submit_s, start_s, end_s,
 * order, nodes, reason}]. Bad input fails with *err naming file, line and
 * column (caller frees).
 */
int ffdl_simulate(const char *cluster_yaml, const char *trace_csv, ffdl_generation *gen,
                  json_t **result, char **err);

#endif
