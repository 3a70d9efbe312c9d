/*
 * runtime.c: builds the embedded-default stack for the command-line tools.
 * Owns: where state lives ($FFDL_HOME, $FFDL_RESULTS), which cluster the
 * local backend offers. Must not: run jobs itself.
 */
#include "app/runtime.h"
#include "app/paths.h"
#include "core/error.h"
#include "gpu/inventory.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *env_or(const char *name, const char *fallback) {
  const char *v = getenv(name);
  return strdup(v && *v ? v : fallback);
}

/* Absolute, so that learners (which run elsewhere) see the same paths. */
static char *absolute(char *path) {
  if (!path || path[0] == '/') return path;
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) return path;
  char *abs = malloc(strlen(cwd) + strlen(path) + 2);
  if (abs) sprintf(abs, "%s/%s", cwd, path);
  free(path);
  return abs;
}

char *ffdl_runtime_home(void) {
  return absolute(env_or("FFDL_HOME", ".ffdl"));
}

int ffdl_runtime_open_store(ffdl_jobstore **store, char **err) {
  char *home = ffdl_runtime_home();
  char path[4200];
  snprintf(path, sizeof path, "%s/ffdl.db", home);
  free(home);
  return ffdl_jobstore_open(path, store, err);
}

static int local_cluster(ffdl_cluster *cl) {
  ffdl_inventory inv;
  ffdl_inventory_probe(&inv);
  const char *gpu_type = inv.gpu_count ? inv.gpus[0].name : NULL;
  int rc =
      ffdl_cluster_add_node(cl, "local", inv.cpus, inv.memory_bytes, inv.gpu_count, gpu_type, NULL);
  ffdl_inventory_free(&inv);
  return rc;
}

int ffdl_runtime_open(ffdl_runtime *rt, const char *policies, const ffdl_orch_observer *observer,
                      void *observer_ud, char **err) {
  memset(rt, 0, sizeof *rt);
  *err = NULL;
  rt->loop = uv_default_loop();
  rt->home = ffdl_runtime_home();
  rt->results = absolute(env_or("FFDL_RESULTS", "ffdl-results"));
  ffdl_generation_opts gopts = {.policies_dir = policies ? policies : ffdl_paths_default_policies(),
                                .lua_dir = ffdl_paths_lua_dir()};
  int rc = ffdl_generation_load(&gopts, &rt->gen, err);
  if (rc == 0) rc = ffdl_runtime_open_store(&rt->store, err);
  if (rc == 0) rc = ffdl_cluster_new(&rt->cluster);
  if (rc == 0) {
    const char *nodes = getenv("FFDL_NODES");
    rc = nodes && *nodes ? ffdl_cluster_load_yaml(rt->cluster, nodes, err)
                         : local_cluster(rt->cluster);
  }
  if (rc == 0) rc = ffdl_backend_local_new(rt->loop, &rt->backend);
  if (rc == 0) {
    ffdl_orch_opts oo = {.loop = rt->loop,
                         .store = rt->store,
                         .gen = rt->gen,
                         .backend = rt->backend,
                         .cluster = rt->cluster,
                         .home = rt->home,
                         .results = rt->results,
                         .root = ffdl_paths_root(),
                         .observer = observer,
                         .observer_ud = observer_ud};
    rc = ffdl_orch_new(&oo, &rt->orch);
  }
  if (rc != 0 && !*err) *err = strdup(ffdl_strerror(rc));
  return rc;
}

static void backend_closed(void *ud) {
  (void)ud;
}

void ffdl_runtime_close(ffdl_runtime *rt) {
  if (rt->backend) {
    ffdl_backend_close(rt->backend, backend_closed, NULL);
    uv_run(rt->loop, UV_RUN_DEFAULT);
  }
  ffdl_orch_free(rt->orch);
  ffdl_cluster_free(rt->cluster);
  ffdl_jobstore_close(rt->store);
  ffdl_generation_free(rt->gen);
  free(rt->home);
  free(rt->results);
  uv_loop_close(rt->loop);
  memset(rt, 0, sizeof *rt);
}
