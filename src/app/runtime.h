/* Wiring for the embedded default: store, policies, local backend, cluster
 * and orchestrator on one loop, as ffdl-run uses them. */
#ifndef FFDL_APP_RUNTIME_H
#define FFDL_APP_RUNTIME_H

#include "orch/orch.h"

typedef struct {
  uv_loop_t *loop;
  ffdl_jobstore *store;
  ffdl_generation *gen;
  ffdl_backend *backend;
  ffdl_cluster *cluster;
  ffdl_orch *orch;
  char *home;    /* $FFDL_HOME, default ./.ffdl */
  char *results; /* $FFDL_RESULTS, default ./ffdl-results */
} ffdl_runtime;

/* $FFDL_HOME or ./.ffdl (caller frees). */
char *ffdl_runtime_home(void);
/* Opens the store only, for commands that read it. */
int ffdl_runtime_open_store(ffdl_jobstore **store, char **err);

/*
 * Opens everything. POLICIES may be NULL (the default directory). The
 * cluster is this machine, or the simulated nodes of the YAML file named by
 * $FFDL_NODES. On failure *err says why (caller frees).
 */
int ffdl_runtime_open(ffdl_runtime *rt, const char *policies, const ffdl_orch_observer *observer,
                      void *observer_ud, char **err);
/* Kills what still runs and frees everything. */
void ffdl_runtime_close(ffdl_runtime *rt);

#endif
