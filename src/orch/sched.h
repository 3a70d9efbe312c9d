/*
 * The scheduling cycle, shared by the orchestrator (real time) and by
 * `ffdl policy simulate` (virtual time): the queue of waiting jobs, and
 * for each cycle the calls of budget.admit, scheduler.rank or
 * scheduler.order, scheduler.place and scheduler.hold, with the
 * reservations that follow. Nothing here knows about processes, stores or
 * HTTP: what happens to a placed job is the owner's business (callbacks).
 */
#ifndef FFDL_ORCH_SCHED_H
#define FFDL_ORCH_SCHED_H

#include "orch/cluster.h"
#include "orch/ledger.h"
#include "policy/generation.h"

#include <jansson.h>
#include <stdint.h>

typedef struct ffdl_sched ffdl_sched;

typedef struct ffdl_sched_job {
  /* Set by the owner before ffdl_sched_enqueue; borrowed. */
  const char *id;
  const json_t *spec; /* what hooks see, with the flat fields below added */
  ffdl_request req;
  int learners, attempt, priority;
  double submitted; /* seconds, on the clock the owner passes as NOW */
  const char *user, *team;
  void *owner; /* the owner's own record of the job */
  /* Set by the scheduler. */
  int *nodes;   /* after placement: a node per learner */
  int *gpu_ids; /* learners x max(gpus, 1) GPU indices */
  double started, rank;
  uint64_t seq;
  int queued, holding, fit_checked, rank_serial;
  int type_index; /* the cluster's number for req.gpu_type; -1: no node has it */
  int shape_id;   /* jobs with the same request share it */
  size_t queue_pos;
} ffdl_sched_job;

typedef struct {
  /* A hook decided about J. HOOK is "admit", "order" or "place";
   * EXPLAINED (a JSON array the callee takes over) holds what the policy
   * recorded with ctx:explain(). May be NULL. */
  void (*decision)(void *ud, ffdl_sched_job *j, const char *hook, const char *outcome,
                   const char *reason, json_t *explained);
  /* J stays queued; REASON says why. */
  void (*waiting)(void *ud, ffdl_sched_job *j, const char *reason);
  /* J left the queue and holds its nodes (j->nodes, j->gpu_ids). HOW
   * describes the placement. */
  void (*placed)(void *ud, ffdl_sched_job *j, const char *how);
  /* J left the queue: it can never fit this cluster. */
  void (*never_fits)(void *ud, ffdl_sched_job *j, const char *why);
} ffdl_sched_callbacks;

typedef struct {
  unsigned long cycles, placements, place_calls, admit_calls, skipped_by_filter;
} ffdl_sched_stats;

int ffdl_sched_new(ffdl_cluster *cluster, ffdl_generation *gen, const ffdl_sched_callbacks *cb,
                   void *ud, ffdl_sched **out);
void ffdl_sched_free(ffdl_sched *s);
/* Later hook calls use GEN (borrowed); ranks are computed again. */
void ffdl_sched_set_generation(ffdl_sched *s, ffdl_generation *gen);

/* J waits for placement from now on. Allocates j->nodes and j->gpu_ids. */
int ffdl_sched_enqueue(ffdl_sched *s, ffdl_sched_job *j, double now);
/* J leaves the queue without being placed (halted). No-op when not queued. */
void ffdl_sched_dequeue(ffdl_sched *s, ffdl_sched_job *j);
/* J holds NODES (a node per learner) without a placement decision: a
 * restarted server taking back what a running job had. */
int ffdl_sched_adopt(ffdl_sched *s, ffdl_sched_job *j, const int *nodes, double now);
/* J's learners ended: its nodes are free again and its GPU time is booked. */
void ffdl_sched_release(ffdl_sched *s, ffdl_sched_job *j, double now);
/* Frees what the scheduler allocated for J (after dequeue or release). */
void ffdl_sched_job_clear(ffdl_sched_job *j);

/* Pushes J as hooks see it: the spec plus id, attempt, user, team,
 * learners, priority, submitted and the flat resources.  [-0, +1, m] */
void ffdl_sched_push_job(lua_State *L, const ffdl_sched_job *j);

/* One cycle at time NOW: returns the number of jobs placed. */
size_t ffdl_sched_cycle(ffdl_sched *s, double now);
size_t ffdl_sched_queued(const ffdl_sched *s);
const ffdl_sched_stats *ffdl_sched_get_stats(const ffdl_sched *s);
ffdl_ledger *ffdl_sched_ledger(ffdl_sched *s);

#endif
