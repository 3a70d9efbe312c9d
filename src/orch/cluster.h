/*
 * The cluster as the scheduler sees it: nodes with capacity, GPUs and
 * labels, and what is reserved on each. Lua sees it through a read-only
 * view whose candidates() filters nodes in C.
 */
#ifndef FFDL_ORCH_CLUSTER_H
#define FFDL_ORCH_CLUSTER_H

#include <jansson.h>
#include <lua.h>
#include <stdint.h>

#define FFDL_MAX_NODE_GPUS 64

typedef struct ffdl_cluster ffdl_cluster;

typedef struct {
  double cpus;
  uint64_t memory;
  int gpus;
  const char *gpu_type; /* NULL: any */
} ffdl_request;

int ffdl_cluster_new(ffdl_cluster **out);
void ffdl_cluster_free(ffdl_cluster *cl);

/* Adds a node; LABELS (borrowed, may be NULL) is a JSON object of strings. */
int ffdl_cluster_add_node(ffdl_cluster *cl, const char *name, double cpus, uint64_t memory,
                          int gpus, const char *gpu_type, const json_t *labels);
/*
 * Adds the nodes of a cluster YAML file:
 *   nodes: [{name, count, cpus, memory, gpus, gpu_type, labels}]
 * where count N expands to name-1..name-N. *err names file, line and field
 * on failure (caller frees).
 */
int ffdl_cluster_load_yaml(ffdl_cluster *cl, const char *path, char **err);

/* Parses "16GiB", "64Gb", "512MiB" or a plain byte count; 0 on success. */
int ffdl_cluster_parse_bytes(const char *text, uint64_t *out);

size_t ffdl_cluster_node_count(const ffdl_cluster *cl);
/* Index of the node called NAME, or -1. */
int ffdl_cluster_find(const ffdl_cluster *cl, const char *name);
const char *ffdl_cluster_node_name(const ffdl_cluster *cl, int node);

/* Reserves REQ on NODE and picks its GPUs (indices written to GPU_IDS,
 * which holds req->gpus entries). Fails with FFDL_ELIMIT when it does not fit. */
int ffdl_cluster_reserve(ffdl_cluster *cl, int node, const ffdl_request *req, int *gpu_ids);
void ffdl_cluster_release(ffdl_cluster *cl, int node, const ffdl_request *req, const int *gpu_ids);

/*
 * Holds: a node held for a blocked job takes no other job until the
 * holds are cleared (the scheduler clears them at the start of each cycle).
 */
int ffdl_cluster_hold(ffdl_cluster *cl, int node);
void ffdl_cluster_clear_holds(ffdl_cluster *cl);
size_t ffdl_cluster_held_count(const ffdl_cluster *cl);
/* 1 when the nodes that are not held have room for LEARNERS learners of
 * REQ now, counting every learner each node could take: a necessary
 * condition for a gang placement, checked without calling Lua. */
int ffdl_cluster_could_fit(ffdl_cluster *cl, const ffdl_request *req, int learners);
/* The same on an empty cluster: could LEARNERS learners of REQ ever fit? */
int ffdl_cluster_could_ever_fit(ffdl_cluster *cl, const ffdl_request *req, int learners);

/* One line per node: "local: 2 CPUs, 23.4 GiB, no GPU" (caller frees). */
char *ffdl_cluster_describe(const ffdl_cluster *cl);
typedef struct {
  double cpus, used_cpus;
  uint64_t memory, used_memory;
  long gpus, used_gpus;
} ffdl_cluster_sums;
/* Capacity and use over all nodes. */
void ffdl_cluster_totals(const ffdl_cluster *cl, ffdl_cluster_sums *out);
/* A small number for GPU_TYPE (0 for none or empty), -1 when no node has it. */
int ffdl_cluster_type_index(const ffdl_cluster *cl, const char *gpu_type);
/* Totals in use and free, as JSON (caller decrefs):
 * {cpus_total, cpus_used, gpus_total, gpus_used, memory_total, memory_used} */
json_t *ffdl_cluster_usage(const ffdl_cluster *cl);

/*
 * Pushes a view for a hook call. With EMPTY set the view shows every node
 * free, which asks "could this ever fit?". The view is valid only during
 * the call it is passed to.  [-0, +1, m]
 * Lua: view:candidates(req [, taken [, opts]]) -> iterator of node tables
 *        {name, free_cpus, free_memory, free_gpus, gpu_type, labels,
 *         cpus, memory, gpus}
 *      req = {cpus=, memory=, gpus=, gpu_type=}; taken = {[name] = {cpus=,
 *      memory=, gpus=}} is what the caller has already placed there.
 *      opts = {limit = n, order = "binpack" | "spread", capacity = true}:
 *      at most n nodes; fewest (binpack) or most (spread) free GPUs first,
 *      node order within the same count; capacity judges the fit by what
 *      the node has in all, not what is free now. Without opts: every node
 *      that fits, in node order. Held nodes are never candidates.
 *      view:nodes() -> iterator over every node table
 *      view:describe() -> the text of ffdl_cluster_describe
 */
void *ffdl_cluster_push_view(ffdl_cluster *cl, lua_State *L, int empty);
/* Ends a view pushed by ffdl_cluster_push_view (its return value): any later
 * use from Lua raises "only valid during the hook call". */
void ffdl_cluster_view_close(void *view);

#endif
