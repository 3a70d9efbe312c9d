/*
 * cluster.c: nodes, their capacity and reservations, and the Lua view that
 * placement hooks score. Owns: capacity bookkeeping, GPU index assignment,
 * candidate filtering (in C, so that Lua only scores). Must not: decide
 * placements (scheduler.lua does) or launch anything.
 */
#include "orch/cluster.h"
#include "core/error.h"
#include "core/str.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

typedef struct {
  char *name;
  char *gpu_type;
  json_t *labels;
  double cpus, used_cpus;
  uint64_t memory, used_memory;
  int gpus, used_gpus;
  unsigned char gpu_busy[FFDL_MAX_NODE_GPUS];
  int type_index; /* into ffdl_cluster.types; 0 is "no GPU type" */
  int held;       /* kept free for a blocked job during this cycle */
} node;

#define BUCKETS (FFDL_MAX_NODE_GPUS + 1)

/*
 * The index that keeps candidate filtering cheap on big clusters: for each
 * GPU type, one bitmap of nodes per number of free GPUs (node order inside
 * a bucket), with a count per bucket so that empty buckets cost nothing,
 * and a summary bit per non-empty word so that a sparse bucket of a big
 * cluster is walked in a few steps, not one per 64 nodes.
 */
typedef struct {
  size_t words;      /* per bitmap */
  size_t swords;     /* per summary */
  uint64_t *bits;    /* [type][bucket][word] */
  uint64_t *summary; /* [type][bucket][sword]: bit w set when word w is not 0 */
  size_t *counts;    /* [type][bucket] */
  int top;           /* the most GPUs a node has: no bucket above it is used */
} bucket_index;

struct ffdl_cluster {
  node *nodes;
  size_t n, cap;
  char **types; /* types[0] is NULL: nodes without a GPU type */
  size_t ntypes;
  bucket_index index;
  int index_valid;
  int *held_list;
  size_t nheld;
  int *name_slots; /* open addressing: node index + 1, 0 empty */
  size_t name_cap;
  struct {
    double cpus;
    uint64_t memory;
    long gpus;
  } used, capacity; /* over all nodes, kept by reserve, release and add_node */
};

int ffdl_cluster_new(ffdl_cluster **out) {
  *out = calloc(1, sizeof **out);
  return *out ? FFDL_OK : FFDL_ENOMEM;
}

void ffdl_cluster_free(ffdl_cluster *cl) {
  if (!cl) return;
  for (size_t i = 0; i < cl->n; i++) {
    free(cl->nodes[i].name);
    free(cl->nodes[i].gpu_type);
    json_decref(cl->nodes[i].labels);
  }
  for (size_t t = 0; t < cl->ntypes; t++)
    free(cl->types[t]);
  free(cl->types);
  free(cl->index.bits);
  free(cl->index.summary);
  free(cl->index.counts);
  free(cl->held_list);
  free(cl->name_slots);
  free(cl->nodes);
  free(cl);
}

/* ---- the bucket index ------------------------------------------------- */

/* GPU types match without regard to case ("a100" in a cluster file is
 * "A100" in a manifest); the first spelling seen names the type. */
static int type_index_of(ffdl_cluster *cl, const char *gpu_type) {
  for (size_t t = 1; t < cl->ntypes; t++)
    if (gpu_type && strcasecmp(cl->types[t], gpu_type) == 0) return (int)t;
  if (!gpu_type) return 0;
  char **grown = realloc(cl->types, (cl->ntypes + 1) * sizeof *grown);
  if (!grown) return -1;
  cl->types = grown;
  cl->types[cl->ntypes] = strdup(gpu_type);
  if (!cl->types[cl->ntypes]) return -1;
  return (int)cl->ntypes++;
}

static size_t bucket_slot(const ffdl_cluster *cl, int type, int bucket) {
  return (size_t)type * BUCKETS + (size_t)bucket;
}

static void index_set(ffdl_cluster *cl, size_t i, int on) {
  const node *nd = &cl->nodes[i];
  size_t slot = bucket_slot(cl, nd->type_index, nd->gpus - nd->used_gpus);
  uint64_t *word = &cl->index.bits[slot * cl->index.words + i / 64];
  uint64_t *summary = &cl->index.summary[slot * cl->index.swords + i / 4096];
  uint64_t bit = (uint64_t)1 << (i % 64), word_bit = (uint64_t)1 << (i / 64 % 64);
  if (on) {
    *word |= bit;
    *summary |= word_bit;
    cl->index.counts[slot]++;
  } else {
    *word &= ~bit;
    if (!*word) *summary &= ~word_bit;
    cl->index.counts[slot]--;
  }
}

/* The first node at or after FROM in SLOT's bitmap, or -1. */
static long next_in_slot(const ffdl_cluster *cl, size_t slot, size_t from) {
  size_t w = from / 64;
  if (w >= cl->index.words) return -1;
  const uint64_t *bits = &cl->index.bits[slot * cl->index.words];
  uint64_t m = bits[w] & (~(uint64_t)0 << (from % 64));
  if (m) return (long)(w * 64 + (size_t)__builtin_ctzll(m));
  /* the next non-empty word, from the summary */
  const uint64_t *summary = &cl->index.summary[slot * cl->index.swords];
  size_t next = w + 1;
  for (size_t sw = next / 64; sw < cl->index.swords; sw++) {
    uint64_t sm = summary[sw];
    if (sw == next / 64) sm &= ~(uint64_t)0 << (next % 64);
    if (sm) {
      size_t found = sw * 64 + (size_t)__builtin_ctzll(sm);
      return (long)(found * 64 + (size_t)__builtin_ctzll(bits[found]));
    }
  }
  return -1;
}

/* Builds the index on first use after nodes were added. */
static int ensure_index(ffdl_cluster *cl) {
  if (cl->index_valid) return FFDL_OK;
  size_t words = (cl->n + 63) / 64, slots = (cl->ntypes ? cl->ntypes : 1) * BUCKETS;
  size_t swords = (words + 63) / 64;
  free(cl->index.bits);
  free(cl->index.summary);
  free(cl->index.counts);
  cl->index.words = words;
  cl->index.swords = swords;
  cl->index.bits = calloc(slots * (words ? words : 1), sizeof(uint64_t));
  cl->index.summary = calloc(slots * (swords ? swords : 1), sizeof(uint64_t));
  cl->index.counts = calloc(slots, sizeof(size_t));
  if (!cl->index.bits || !cl->index.summary || !cl->index.counts) return FFDL_ENOMEM;
  cl->index.top = 0;
  for (size_t i = 0; i < cl->n; i++) {
    if (cl->nodes[i].gpus > cl->index.top) cl->index.top = cl->nodes[i].gpus;
    index_set(cl, i, 1);
  }
  cl->index_valid = 1;
  return FFDL_OK;
}

int ffdl_cluster_add_node(ffdl_cluster *cl, const char *name, double cpus, uint64_t memory,
                          int gpus, const char *gpu_type, const json_t *labels) {
  if (gpus < 0 || gpus > FFDL_MAX_NODE_GPUS || cpus < 0) return FFDL_EINVALID;
  if (cl->n == cl->cap) {
    size_t cap = cl->cap ? cl->cap * 2 : 4;
    node *grown = realloc(cl->nodes, cap * sizeof *grown);
    if (!grown) return FFDL_ENOMEM;
    cl->nodes = grown;
    cl->cap = cap;
  }
  if (cl->ntypes == 0) {
    cl->types = calloc(1, sizeof *cl->types);
    if (!cl->types) return FFDL_ENOMEM;
    cl->ntypes = 1;
  }
  int type = type_index_of(cl, gpu_type);
  if (type < 0) return FFDL_ENOMEM;
  node *nd = &cl->nodes[cl->n];
  memset(nd, 0, sizeof *nd);
  nd->type_index = type;
  cl->index_valid = 0;
  free(cl->name_slots); /* rebuilt on the next lookup */
  cl->name_slots = NULL;
  nd->name = strdup(name);
  nd->gpu_type = gpu_type ? strdup(gpu_type) : NULL;
  nd->labels = labels ? json_deep_copy(labels) : json_object();
  nd->cpus = cpus;
  nd->memory = memory;
  nd->gpus = gpus;
  if (!nd->name || !nd->labels) return FFDL_ENOMEM;
  cl->capacity.cpus += cpus;
  cl->capacity.memory += memory;
  cl->capacity.gpus += gpus;
  cl->n++;
  return FFDL_OK;
}

size_t ffdl_cluster_node_count(const ffdl_cluster *cl) {
  return cl->n;
}

static size_t name_hash(const char *name) {
  size_t h = 5381;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    h = h * 33 + *p;
  return h;
}

/* The name index, built on first lookup after nodes were added. */
static int ensure_names(ffdl_cluster *cl) {
  if (cl->name_cap >= 2 * cl->n && cl->name_slots) return FFDL_OK;
  size_t cap = 16;
  while (cap < 2 * cl->n)
    cap *= 2;
  int *slots = calloc(cap, sizeof *slots);
  if (!slots) return FFDL_ENOMEM;
  for (size_t i = 0; i < cl->n; i++) {
    size_t k = name_hash(cl->nodes[i].name) & (cap - 1);
    while (slots[k])
      k = (k + 1) & (cap - 1);
    slots[k] = (int)i + 1;
  }
  free(cl->name_slots);
  cl->name_slots = slots;
  cl->name_cap = cap;
  return FFDL_OK;
}

int ffdl_cluster_find(const ffdl_cluster *ccl, const char *name) {
  ffdl_cluster *cl = (ffdl_cluster *)ccl; /* the index is a cache */
  if (ensure_names(cl) != FFDL_OK) {
    for (size_t i = 0; i < cl->n; i++)
      if (strcmp(cl->nodes[i].name, name) == 0) return (int)i;
    return -1;
  }
  for (size_t k = name_hash(name) & (cl->name_cap - 1); cl->name_slots[k];
       k = (k + 1) & (cl->name_cap - 1))
    if (strcmp(cl->nodes[cl->name_slots[k] - 1].name, name) == 0) return cl->name_slots[k] - 1;
  return -1;
}

const char *ffdl_cluster_node_name(const ffdl_cluster *cl, int idx) {
  return idx >= 0 && (size_t)idx < cl->n ? cl->nodes[idx].name : NULL;
}

static int type_matches(const node *nd, const char *gpu_type) {
  return !gpu_type || !*gpu_type || (nd->gpu_type && strcasecmp(nd->gpu_type, gpu_type) == 0);
}

int ffdl_cluster_reserve(ffdl_cluster *cl, int idx, const ffdl_request *req, int *gpu_ids) {
  node *nd = &cl->nodes[idx];
  if (nd->used_cpus + req->cpus > nd->cpus + 1e-9 || nd->used_memory + req->memory > nd->memory ||
      nd->used_gpus + req->gpus > nd->gpus || (req->gpus > 0 && !type_matches(nd, req->gpu_type)))
    return FFDL_ELIMIT;
  if (ensure_index(cl) != FFDL_OK) return FFDL_ENOMEM;
  index_set(cl, (size_t)idx, 0);
  int picked = 0;
  for (int g = 0; g < nd->gpus && picked < req->gpus; g++) {
    if (nd->gpu_busy[g]) continue;
    nd->gpu_busy[g] = 1;
    gpu_ids[picked++] = g;
  }
  nd->used_cpus += req->cpus;
  nd->used_memory += req->memory;
  nd->used_gpus += req->gpus;
  cl->used.cpus += req->cpus;
  cl->used.memory += req->memory;
  cl->used.gpus += req->gpus;
  index_set(cl, (size_t)idx, 1);
  return FFDL_OK;
}

void ffdl_cluster_release(ffdl_cluster *cl, int idx, const ffdl_request *req, const int *gpu_ids) {
  node *nd = &cl->nodes[idx];
  if (cl->index_valid) index_set(cl, (size_t)idx, 0);
  nd->used_cpus -= req->cpus;
  if (nd->used_cpus < 1e-9) nd->used_cpus = 0;
  cl->used.cpus -= req->cpus;
  if (cl->used.cpus < 1e-9) cl->used.cpus = 0;
  cl->used.memory -= req->memory;
  cl->used.gpus -= req->gpus;
  nd->used_memory -= req->memory;
  nd->used_gpus -= req->gpus;
  for (int i = 0; i < req->gpus; i++)
    nd->gpu_busy[gpu_ids[i]] = 0;
  if (cl->index_valid) index_set(cl, (size_t)idx, 1);
}

int ffdl_cluster_hold(ffdl_cluster *cl, int idx) {
  if (idx < 0 || (size_t)idx >= cl->n) return FFDL_EINVALID;
  if (cl->nodes[idx].held) return FFDL_OK;
  int *grown = realloc(cl->held_list, (cl->nheld + 1) * sizeof *grown);
  if (!grown) return FFDL_ENOMEM;
  cl->held_list = grown;
  cl->held_list[cl->nheld++] = idx;
  cl->nodes[idx].held = 1;
  return FFDL_OK;
}

void ffdl_cluster_clear_holds(ffdl_cluster *cl) {
  for (size_t k = 0; k < cl->nheld; k++)
    cl->nodes[cl->held_list[k]].held = 0;
  cl->nheld = 0;
}

size_t ffdl_cluster_held_count(const ffdl_cluster *cl) {
  return cl->nheld;
}

/* Does node ND have room for REQ beyond TAKEN (what this placement already
 * put there)? WANT_TYPE: the GPU type index REQ's GPUs must have, or -1. */
static int node_fits(const node *nd, const ffdl_request *req, int want_type, int by_capacity,
                     double taken_cpus, double taken_mem, int taken_gpus) {
  double free_cpus = nd->cpus - (by_capacity ? 0 : nd->used_cpus) - taken_cpus;
  double free_mem = (double)(nd->memory - (by_capacity ? 0 : nd->used_memory)) - taken_mem;
  int free_gpus = nd->gpus - (by_capacity ? 0 : nd->used_gpus) - taken_gpus;
  if (free_cpus + 1e-9 < req->cpus || free_mem < (double)req->memory || free_gpus < req->gpus)
    return 0;
  return req->gpus == 0 || want_type < 0 || nd->type_index == want_type;
}

/* How many learners of REQ fit on ND now (at most WANT). */
static int learners_on(const node *nd, const ffdl_request *req, int want) {
  int fit = want;
  if (req->gpus > 0) {
    if (!type_matches(nd, req->gpu_type)) return 0;
    int by_gpus = (nd->gpus - nd->used_gpus) / req->gpus;
    if (by_gpus < fit) fit = by_gpus;
  }
  if (req->cpus > 0) {
    int by_cpus = (int)((nd->cpus - nd->used_cpus + 1e-9) / req->cpus);
    if (by_cpus < fit) fit = by_cpus;
  }
  if (req->memory > 0) {
    uint64_t by_mem = (nd->memory - nd->used_memory) / req->memory;
    if (by_mem < (uint64_t)fit) fit = (int)by_mem;
  }
  return fit;
}

/* How many learners of REQ fit on ND when it is empty (at most WANT). */
static int learners_by_capacity(const node *nd, const ffdl_request *req, int want) {
  node empty = *nd;
  empty.used_cpus = 0, empty.used_memory = 0, empty.used_gpus = 0;
  return learners_on(&empty, req, want);
}

/* Counts the learners of REQ the nodes can take, up to LEARNERS: what is
 * free now (skipping held nodes), or BY_CAPACITY on empty nodes. */
static int room_for(ffdl_cluster *cl, const ffdl_request *req, int learners, int by_capacity) {
  if (ensure_index(cl) != FFDL_OK) return 1; /* cannot tell: let the hook decide */
  int want = req->gpus < 0 ? 0 : req->gpus, found = 0;
  int typed = want > 0 && req->gpu_type && *req->gpu_type;
  int only = typed ? ffdl_cluster_type_index(cl, req->gpu_type) : -1;
  if (want >= BUCKETS || (typed && only < 0)) return 0;
  /* buckets count free GPUs: below WANT, only an empty node could do */
  int lowest = by_capacity ? 0 : want;
  for (size_t t = 0; t < cl->ntypes; t++) {
    if (only >= 0 && (size_t)only != t) continue;
    for (int b = lowest; b <= cl->index.top; b++) {
      size_t slot = bucket_slot(cl, (int)t, b);
      if (!cl->index.counts[slot]) continue;
      for (long i = next_in_slot(cl, slot, 0); i >= 0; i = next_in_slot(cl, slot, (size_t)i + 1)) {
        const node *nd = &cl->nodes[i];
        if (by_capacity)
          found += learners_by_capacity(nd, req, learners - found);
        else if (!nd->held)
          found += learners_on(nd, req, learners - found);
        if (found >= learners) return 1;
      }
    }
  }
  return 0;
}

int ffdl_cluster_could_ever_fit(ffdl_cluster *cl, const ffdl_request *req, int learners) {
  return room_for(cl, req, learners, 1);
}

int ffdl_cluster_could_fit(ffdl_cluster *cl, const ffdl_request *req, int learners) {
  return room_for(cl, req, learners, 0);
}

char *ffdl_cluster_describe(const ffdl_cluster *cl) {
  size_t cap = 128 + cl->n * 160, len = 0;
  char *out = malloc(cap);
  if (!out) return NULL;
  out[0] = '\0';
  for (size_t i = 0; i < cl->n && len + 160 < cap; i++) {
    const node *nd = &cl->nodes[i];
    char gpus[96];
    if (nd->gpus)
      snprintf(gpus, sizeof gpus, "%d GPUs (%s)", nd->gpus,
               nd->gpu_type ? nd->gpu_type : "any type");
    else
      snprintf(gpus, sizeof gpus, "no GPU");
    len += (size_t)snprintf(out + len, cap - len, "%s%s: %g CPUs, %.1f GiB, %s", i ? "; " : "",
                            nd->name, nd->cpus, (double)nd->memory / (1u << 30), gpus);
  }
  return out;
}

void ffdl_cluster_totals(const ffdl_cluster *cl, ffdl_cluster_sums *out) {
  out->cpus = cl->capacity.cpus;
  out->gpus = cl->capacity.gpus;
  out->memory = cl->capacity.memory;
  out->used_cpus = cl->used.cpus;
  out->used_gpus = cl->used.gpus;
  out->used_memory = cl->used.memory;
}

json_t *ffdl_cluster_usage(const ffdl_cluster *cl) {
  ffdl_cluster_sums t;
  ffdl_cluster_totals(cl, &t);
  return json_pack("{s:f,s:f,s:I,s:I,s:I,s:I}", "cpus_total", t.cpus, "cpus_used", t.used_cpus,
                   "gpus_total", (json_int_t)t.gpus, "gpus_used", (json_int_t)t.used_gpus,
                   "memory_total", (json_int_t)t.memory, "memory_used", (json_int_t)t.used_memory);
}

int ffdl_cluster_type_index(const ffdl_cluster *cl, const char *gpu_type) {
  if (!gpu_type || !*gpu_type) return 0;
  for (size_t t = 1; t < cl->ntypes; t++)
    if (strcasecmp(cl->types[t], gpu_type) == 0) return (int)t;
  return -1;
}

/* ---- the Lua view ---------------------------------------------------- */

typedef struct {
  ffdl_cluster *cl;
  int empty;
} view;

static const char VIEW_MT[] = "ffdl.ClusterView";

static int l_read_only(lua_State *L) {
  return luaL_error(L, "node labels are read-only");
}

/* One shared, read-only empty table for every node without labels: most
 * nodes have none, and a fresh table per candidate costs. */
static void push_no_labels(lua_State *L) {
  static const char KEY = 0;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &KEY) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, l_read_only);
  lua_setfield(L, -2, "__newindex");
  lua_pushliteral(L, "locked");
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &KEY);
}

static void push_labels(lua_State *L, const node *nd) {
  if (json_object_size(nd->labels) == 0) {
    push_no_labels(L);
    return;
  }
  lua_createtable(L, 0, (int)json_object_size(nd->labels));
  const char *key;
  json_t *value;
  json_object_foreach(nd->labels, key, value) {
    if (!json_is_string(value)) continue;
    lua_pushstring(L, json_string_value(value));
    lua_setfield(L, -2, key);
  }
}

/*
 * A node as hooks see it: a small userdata whose fields are read on
 * demand (a scoring function reads two or three of them; building a
 * nine-field table per candidate cost more than the scoring). It keeps
 * its view alive and fails once the view is closed.
 */
typedef struct {
  view *v;
  int index, empty, taken_gpus;
  double taken_cpus;
  lua_Integer taken_memory;
} node_ref;

static const char NODE_MT_KEY = 0;

/* What ND has free for hooks: in use or not (USED), less TAKEN_*. */
static int free_gpus_of(const node *nd, int used, int taken_gpus) {
  return nd->gpus - (used ? nd->used_gpus : 0) - taken_gpus;
}

static double free_cpus_of(const node *nd, int used, double taken_cpus) {
  return nd->cpus - (used ? nd->used_cpus : 0) - taken_cpus;
}

static int l_node_index(lua_State *L) {
  const node_ref *r = lua_touserdata(L, 1);
  if (!r->v->cl) return luaL_error(L, "a node is only valid during the hook call");
  const node *nd = &r->v->cl->nodes[r->index];
  const char *key = lua_tostring(L, 2);
  int used = !r->empty;
  if (!key) return 0;
  if (!strcmp(key, "free_gpus"))
    lua_pushinteger(L, free_gpus_of(nd, used, r->taken_gpus));
  else if (!strcmp(key, "free_cpus"))
    lua_pushnumber(L, free_cpus_of(nd, used, r->taken_cpus));
  else if (!strcmp(key, "free_memory"))
    lua_pushinteger(L, (lua_Integer)(nd->memory - (used ? nd->used_memory : 0)) - r->taken_memory);
  else if (!strcmp(key, "name"))
    lua_pushstring(L, nd->name);
  else if (!strcmp(key, "gpus"))
    lua_pushinteger(L, nd->gpus);
  else if (!strcmp(key, "cpus"))
    lua_pushnumber(L, nd->cpus);
  else if (!strcmp(key, "memory"))
    lua_pushinteger(L, (lua_Integer)nd->memory);
  else if (!strcmp(key, "gpu_type") && nd->gpu_type)
    lua_pushstring(L, nd->gpu_type);
  else if (!strcmp(key, "labels"))
    push_labels(L, nd);
  else
    return 0;
  return 1;
}

static int l_node_tostring(lua_State *L) {
  const node_ref *r = lua_touserdata(L, 1);
  lua_pushfstring(L, "node %s", r->v->cl ? r->v->cl->nodes[r->index].name : "(closed view)");
  return 1;
}

static int l_node_newindex(lua_State *L) {
  return luaL_error(L, "nodes are read-only");
}

static void push_node_metatable(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &NODE_MT_KEY) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_createtable(L, 0, 5);
  lua_pushcfunction(L, l_node_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_node_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, l_node_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "ffdl.Node");
  lua_setfield(L, -2, "__name");
  lua_pushliteral(L, "locked");
  lua_setfield(L, -2, "__metatable");
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &NODE_MT_KEY);
}

/*
 * Node objects with nothing taken are made once per node and Lua state
 * and handed out again, moved to the current view (a userdata per
 * candidate, and collecting it, cost a fifth of candidates()). Their
 * fields are the same whichever call yields them, and one kept from an
 * earlier call still fails unless it is yielded again. The cache table
 * holds the cluster it belongs to at [0].
 */
static const char NODE_CACHE_KEY = 0;

static void push_node_cache(lua_State *L, const ffdl_cluster *cl) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &NODE_CACHE_KEY) == LUA_TTABLE) {
    int same = lua_rawgeti(L, -1, 0) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == cl;
    lua_pop(L, 1);
    if (same) return;
  }
  lua_pop(L, 1);
  lua_createtable(L, (int)cl->n, 1);
  lua_pushlightuserdata(L, (void *)cl);
  lua_rawseti(L, -2, 0);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &NODE_CACHE_KEY);
}

/* Pushes node INDEX of the view at stack index VIEW_IDX; CACHE_IDX is
 * the node cache.  [-0, +1, m] */
static void push_node(lua_State *L, int view_idx, int cache_idx, view *v, size_t index,
                      double taken_cpus, lua_Integer taken_mem, int taken_gpus) {
  int untaken = taken_cpus == 0 && taken_mem == 0 && taken_gpus == 0;
  if (untaken) {
    if (lua_rawgeti(L, cache_idx, (lua_Integer)index + 1) == LUA_TUSERDATA) {
      node_ref *r = lua_touserdata(L, -1);
      r->v = v;
      r->empty = v->empty;
      lua_pushvalue(L, view_idx);
      lua_setiuservalue(L, -2, 1);
      return;
    }
    lua_pop(L, 1);
  }
  node_ref *r = lua_newuserdatauv(L, sizeof *r, 1);
  *r = (node_ref){v, (int)index, v->empty, taken_gpus, taken_cpus, taken_mem};
  lua_pushvalue(L, view_idx);
  lua_setiuservalue(L, -2, 1);
  push_node_metatable(L);
  lua_setmetatable(L, -2);
  if (untaken) {
    lua_pushvalue(L, -1);
    lua_rawseti(L, cache_idx, (lua_Integer)index + 1);
  }
}

static view *check_view(lua_State *L) {
  view *v = luaL_checkudata(L, 1, VIEW_MT);
  if (!v->cl) luaL_error(L, "the cluster view is only valid during the hook call");
  return v;
}

static lua_Number field_number(lua_State *L, int t, const char *name) {
  lua_getfield(L, t, name);
  lua_Number n = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return n;
}

/* Reads taken[name] = {cpus, memory, gpus} when TAKEN is a table. */
static void taken_on(lua_State *L, int taken, const char *name, double *cpus, lua_Integer *mem,
                     int *gpus) {
  *cpus = 0, *mem = 0, *gpus = 0;
  if (!lua_istable(L, taken)) return;
  if (lua_getfield(L, taken, name) == LUA_TTABLE) {
    int t = lua_gettop(L);
    *cpus = field_number(L, t, "cpus");
    *mem = (lua_Integer)field_number(L, t, "memory");
    *gpus = (int)field_number(L, t, "gpus");
  }
  lua_pop(L, 1);
}

typedef enum { ORDER_NODES, ORDER_BINPACK, ORDER_SPREAD } scan_order;

/*
 * One candidates() iteration. ORDER_NODES walks the nodes in order; the
 * other orders walk the bucket index (fewest or most free GPUs first).
 */
typedef struct {
  view *v;
  ffdl_request req; /* no gpu_type: want_type stands for it */
  scan_order order;
  int by_capacity, skip_held;
  lua_Integer limit, yielded;
  int bucket, type; /* bucket walk position */
  int want_type;    /* the GPU type's index; -1: any type */
  size_t next;      /* next node index: in ORDER_NODES, or inside the bucket */
} scan;

static int scan_type_ok(const scan *sc, size_t t) {
  return sc->want_type < 0 || (size_t)sc->want_type == t;
}

/* The node at or after sc->next in the current bucket, or -1. */
static long scan_bucket(scan *sc) {
  ffdl_cluster *cl = sc->v->cl;
  size_t slot = bucket_slot(cl, sc->type, sc->bucket);
  if (!cl->index.counts[slot]) return -1;
  return next_in_slot(cl, slot, sc->next);
}

/* Moves to the next node in scan order (any node, fitting or not); -1 at the end. */
static long scan_step(scan *sc) {
  ffdl_cluster *cl = sc->v->cl;
  if (sc->order == ORDER_NODES) return sc->next < cl->n ? (long)sc->next++ : -1;
  int lowest = sc->by_capacity ? 0 : sc->req.gpus;
  for (;;) {
    if (sc->bucket < lowest || sc->bucket > cl->index.top) return -1;
    if ((size_t)sc->type < cl->ntypes && scan_type_ok(sc, (size_t)sc->type)) {
      long i = scan_bucket(sc);
      if (i >= 0) {
        sc->next = (size_t)i + 1;
        return i;
      }
    }
    sc->next = 0;
    if ((size_t)++sc->type >= cl->ntypes) {
      sc->type = 0;
      sc->bucket += sc->order == ORDER_BINPACK ? 1 : -1;
    }
  }
}

static int candidates_next(lua_State *L) {
  scan *sc = lua_touserdata(L, lua_upvalueindex(1));
  view *v = sc->v;
  if (!v->cl) return luaL_error(L, "the cluster view is only valid during the hook call");
  int taken = lua_upvalueindex(2);
  if (sc->limit > 0 && sc->yielded >= sc->limit) return 0;
  /* most jobs have one learner, so taken is empty: no lookup per node */
  int any_taken = lua_istable(L, taken) && (lua_pushnil(L), lua_next(L, taken) != 0);
  if (any_taken) lua_pop(L, 2);
  for (long i; (i = scan_step(sc)) >= 0;) {
    const node *nd = &v->cl->nodes[i];
    if (sc->skip_held && nd->held) continue;
    double tc = 0;
    lua_Integer tm = 0;
    int tg = 0;
    if (any_taken) taken_on(L, taken, nd->name, &tc, &tm, &tg);
    if (!node_fits(nd, &sc->req, sc->want_type, sc->by_capacity, tc, (double)tm, tg)) continue;
    sc->yielded++;
    push_node(L, lua_upvalueindex(3), lua_upvalueindex(4), v, (size_t)i, tc, tm, tg);
    /* what scoring reads most, as extra loop values: each field read
     * through the node is a call into C */
    lua_pushinteger(L, free_gpus_of(nd, !v->empty, tg));
    lua_pushnumber(L, free_cpus_of(nd, !v->empty, tc));
    return 3;
  }
  return 0;
}

static void read_request(lua_State *L, int t, scan *sc) {
  sc->req.cpus = field_number(L, t, "cpus");
  lua_Number mem = field_number(L, t, "memory");
  sc->req.memory = mem > 0 ? (uint64_t)mem : 0;
  sc->req.gpus = (int)field_number(L, t, "gpus");
  if (sc->req.gpus < 0) sc->req.gpus = 0;
  if (sc->req.gpus > FFDL_MAX_NODE_GPUS) sc->req.gpus = BUCKETS; /* fits nowhere */
  if (lua_getfield(L, t, "gpu_type") == LUA_TSTRING && sc->req.gpus > 0 && lua_rawlen(L, -1) > 0) {
    int type = ffdl_cluster_type_index(sc->v->cl, lua_tostring(L, -1));
    if (type > 0)
      sc->want_type = type;
    else
      sc->req.gpus = BUCKETS; /* no node has that type: fits nowhere */
  }
  lua_pop(L, 1);
}

/* opts = {limit = n, order = "binpack"|"spread", capacity = true} */
static void read_options(lua_State *L, int t, scan *sc) {
  sc->order = ORDER_NODES;
  if (!lua_istable(L, t)) return;
  sc->limit = (lua_Integer)field_number(L, t, "limit");
  lua_getfield(L, t, "order");
  const char *order = lua_tostring(L, -1);
  if (order && strcmp(order, "binpack") == 0)
    sc->order = ORDER_BINPACK;
  else if (order && strcmp(order, "spread") == 0)
    sc->order = ORDER_SPREAD;
  else if (order)
    luaL_error(L, "candidates(): order must be \"binpack\" or \"spread\", not \"%s\"", order);
  lua_pop(L, 1);
  lua_getfield(L, t, "capacity");
  sc->by_capacity = lua_toboolean(L, -1);
  lua_pop(L, 1);
}

/* Pushes the iterator over the nodes that fit the request at index REQ
 * (0: every node); TAKEN and OPTS are stack indices or 0. The view object
 * is at index 1: the iterator keeps it alive. */
static int push_scan(lua_State *L, view *v, int req, int taken, int opts, int skip_held) {
  scan *sc = lua_newuserdatauv(L, sizeof *sc, 0);
  memset(sc, 0, sizeof *sc);
  sc->v = v;
  sc->want_type = -1;
  sc->skip_held = skip_held && !v->empty;
  if (req) read_request(L, req, sc);
  if (opts) read_options(L, opts, sc);
  sc->by_capacity |= v->empty; /* "could it ever fit": every node counts as free */
  if (sc->order != ORDER_NODES && ensure_index(v->cl) != FFDL_OK) sc->order = ORDER_NODES;
  if (sc->order == ORDER_BINPACK) sc->bucket = sc->by_capacity ? 0 : sc->req.gpus;
  if (sc->order == ORDER_SPREAD) sc->bucket = v->cl->index.top;
  if (taken)
    lua_pushvalue(L, taken);
  else
    lua_pushnil(L);
  lua_pushvalue(L, 1);
  push_node_cache(L, v->cl);
  lua_pushcclosure(L, candidates_next, 4);
  return 1;
}

static int l_candidates(lua_State *L) {
  view *v = check_view(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 4);
  return push_scan(L, v, 2, lua_istable(L, 3) ? 3 : 0, lua_istable(L, 4) ? 4 : 0, 1);
}

static int l_nodes(lua_State *L) {
  view *v = check_view(L);
  return push_scan(L, v, 0, 0, 0, 0);
}

static int l_describe(lua_State *L) {
  view *v = check_view(L);
  char *text = ffdl_cluster_describe(v->cl);
  lua_pushstring(L, text ? text : "");
  free(text);
  return 1;
}

static int l_view_gc(lua_State *L) {
  view *v = luaL_checkudata(L, 1, VIEW_MT);
  v->cl = NULL;
  return 0;
}

void ffdl_cluster_view_close(void *v) {
  if (v) ((view *)v)->cl = NULL;
}

void *ffdl_cluster_push_view(ffdl_cluster *cl, lua_State *L, int empty) {
  view *v = lua_newuserdatauv(L, sizeof *v, 0);
  v->cl = cl;
  v->empty = empty;
  if (luaL_newmetatable(L, VIEW_MT)) {
    static const luaL_Reg methods[] = {
        {"candidates", l_candidates}, {"nodes", l_nodes}, {"describe", l_describe}, {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_view_gc);
    lua_setfield(L, -2, "__close");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
  }
  lua_setmetatable(L, -2);
  return v;
}

/* ---- cluster YAML ---------------------------------------------------- */

static char *yaml_error(const char *path, const yaml_node_t *n, const char *field,
                        const char *msg) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s:%d:%d: %s: %s", path, n ? (int)n->start_mark.line + 1 : 1,
           n ? (int)n->start_mark.column + 1 : 1, field, msg);
  return strdup(buf);
}

static yaml_node_t *map_get(yaml_document_t *doc, yaml_node_t *map, const char *key) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = yaml_document_get_node(doc, p->key);
    if (k && k->type == YAML_SCALAR_NODE && strcmp((char *)k->data.scalar.value, key) == 0)
      return yaml_document_get_node(doc, p->value);
  }
  return NULL;
}

static const char *scalar(yaml_node_t *n) {
  return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

int ffdl_cluster_parse_bytes(const char *text, uint64_t *out) {
  static const struct {
    const char *unit;
    double factor;
  } units[] = {{"", 1},
               {"b", 1},
               {"kb", 1e3},
               {"kib", 1024.0},
               {"mb", 1e6},
               {"mib", 1048576.0},
               {"gb", 1e9},
               {"gib", 1073741824.0},
               {"tb", 1e12},
               {"tib", 1099511627776.0},
               {"k", 1e3},
               {"m", 1e6},
               {"g", 1e9},
               {"t", 1e12},
               /* Kubernetes' binary suffixes, as in a pod's resources */
               {"ki", 1024.0},
               {"mi", 1048576.0},
               {"gi", 1073741824.0},
               {"ti", 1099511627776.0}};
  /* digits with an optional fraction: strtod alone would take "inf", "nan",
   * hex and exponents */
  const char *p = text;
  while (*p == ' ')
    p++;
  if (*p < '0' || *p > '9') return -1;
  char *end;
  double v = strtod(p, &end);
  for (const char *q = p; q < end; q++)
    if ((*q < '0' || *q > '9') && *q != '.') return -1;
  while (*end == ' ')
    end++;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcasecmp(end, units[i].unit) == 0) {
      double bytes = v * units[i].factor + 0.5;
      if (bytes >= 9.2e18) return -1; /* past what a uint64_t holds with room */
      *out = (uint64_t)bytes;
      return 0;
    }
  }
  return -1;
}

/* One node entry's fields, checked. */
typedef struct {
  const char *name, *gpu_type;
  long count; /* -1: no count, one node named NAME */
  double cpus;
  uint64_t memory;
  long gpus;
  json_t *labels;
} node_entry;

static const char *const NODE_FIELDS[] = {"name", "count",    "cpus",  "memory",
                                          "gpus", "gpu_type", "labels"};

/* "nodes[I].KEY: MSG" at the value's position. */
static int field_error(const char *path, const yaml_node_t *at, int index, const char *key,
                       const char *msg, char **err) {
  char field[96];
  snprintf(field, sizeof field, "nodes[%d].%s", index, key);
  *err = yaml_error(path, at, field, msg);
  return FFDL_EINVALID;
}

/* A whole number in [LO, HI]. */
static int whole_in(const char *text, long lo, long hi, long *out) {
  double v;
  if (ffdl_parse_number(text, (double)lo, (double)hi, 1, &v) != 0) return -1;
  *out = (long)v;
  return 0;
}

/* Every key known, every value a scalar where one is expected: a typo such
 * as "gpu-type" would otherwise leave the GPUs untyped without a word. */
static int check_node_keys(yaml_document_t *doc, yaml_node_t *entry, const char *path, int index,
                           char **err) {
  for (yaml_node_pair_t *p = entry->data.mapping.pairs.start; p < entry->data.mapping.pairs.top;
       p++) {
    yaml_node_t *k = yaml_document_get_node(doc, p->key),
                *v = yaml_document_get_node(doc, p->value);
    const char *key = scalar(k);
    size_t known = 0;
    while (key && known < sizeof NODE_FIELDS / sizeof NODE_FIELDS[0] &&
           strcmp(key, NODE_FIELDS[known]) != 0)
      known++;
    if (!key || known == sizeof NODE_FIELDS / sizeof NODE_FIELDS[0])
      return field_error(path, k, index, key ? key : "?",
                         "unknown field (known: name, count, cpus, memory, gpus, gpu_type, "
                         "labels)",
                         err);
    int wants_mapping = strcmp(key, "labels") == 0;
    if (v && (wants_mapping ? v->type != YAML_MAPPING_NODE : v->type != YAML_SCALAR_NODE))
      return field_error(path, v, index, key,
                         wants_mapping ? "must be a mapping of label names to values"
                                       : "must be a single value",
                         err);
  }
  return FFDL_OK;
}

static int read_labels(yaml_document_t *doc, yaml_node_t *lab, const char *path, int index,
                       json_t *labels, char **err) {
  for (yaml_node_pair_t *p = lab->data.mapping.pairs.start; p < lab->data.mapping.pairs.top; p++) {
    yaml_node_t *v = yaml_document_get_node(doc, p->value);
    const char *k = scalar(yaml_document_get_node(doc, p->key)), *text = scalar(v);
    if (!k || !text) return field_error(path, v, index, "labels", "values must be strings", err);
    json_object_set_new(labels, k, json_string(text));
  }
  return FFDL_OK;
}

/* Reads and checks ENTRY's fields into E (E->labels to release). */
static int read_node_entry(yaml_document_t *doc, yaml_node_t *entry, const char *path, int index,
                           node_entry *e, char **err) {
  int rc = check_node_keys(doc, entry, path, index, err);
  if (rc != FFDL_OK) return rc;
  yaml_node_t *name = map_get(doc, entry, "name"), *count = map_get(doc, entry, "count");
  yaml_node_t *cpus = map_get(doc, entry, "cpus"), *mem = map_get(doc, entry, "memory");
  yaml_node_t *gpus = map_get(doc, entry, "gpus"), *type = map_get(doc, entry, "gpu_type");
  yaml_node_t *labels = map_get(doc, entry, "labels");
  e->name = scalar(name);
  e->gpu_type = type && *scalar(type) ? scalar(type) : NULL;
  e->count = -1;
  e->gpus = 0;
  if (!e->name || !*e->name)
    return field_error(path, name ? name : entry, index, "name", "is required", err);
  if (count && whole_in(scalar(count), 0, 100000, &e->count) != 0)
    return field_error(path, count, index, "count", "must be a whole number 0..100000", err);
  if (!cpus || ffdl_parse_number(scalar(cpus), 0, 1e6, 0, &e->cpus) != 0 || e->cpus <= 0)
    return field_error(path, cpus ? cpus : entry, index, "cpus", "must be a number > 0", err);
  if (!mem || ffdl_cluster_parse_bytes(scalar(mem), &e->memory) != 0)
    return field_error(path, mem ? mem : entry, index, "memory",
                       "must be a size such as 64GiB, 512Gi or 68719476736", err);
  if (gpus && whole_in(scalar(gpus), 0, FFDL_MAX_NODE_GPUS, &e->gpus) != 0)
    return field_error(path, gpus, index, "gpus", "must be a whole number 0..64", err);
  e->labels = json_object();
  if (!e->labels) return FFDL_ENOMEM;
  return labels ? read_labels(doc, labels, path, index, e->labels, err) : FFDL_OK;
}

static int load_node_entry(ffdl_cluster *cl, yaml_document_t *doc, yaml_node_t *entry,
                           const char *path, int index, char **err) {
  if (entry->type != YAML_MAPPING_NODE) {
    char field[64];
    snprintf(field, sizeof field, "nodes[%d]", index);
    *err = yaml_error(path, entry, field, "must be a mapping");
    return FFDL_EINVALID;
  }
  node_entry e = {0};
  int rc = read_node_entry(doc, entry, path, index, &e, err);
  if (rc == FFDL_OK && e.count < 0)
    rc = ffdl_cluster_add_node(cl, e.name, e.cpus, e.memory, (int)e.gpus, e.gpu_type, e.labels);
  for (long i = 1; rc == FFDL_OK && i <= e.count; i++) {
    char full[256];
    snprintf(full, sizeof full, "%s-%ld", e.name, i);
    rc = ffdl_cluster_add_node(cl, full, e.cpus, e.memory, (int)e.gpus, e.gpu_type, e.labels);
  }
  json_decref(e.labels);
  return rc;
}

/* Placements name nodes, so two nodes of one name would be one node to a
 * policy. FIRST[k] is the first node entry k made. */
static int check_unique_names(const ffdl_cluster *cl, const char *path, yaml_document_t *doc,
                              yaml_node_t *nodes, const size_t *first, char **err) {
  for (size_t i = 0; i < cl->n; i++) {
    if (ffdl_cluster_find(cl, cl->nodes[i].name) == (int)i) continue;
    int k = 0;
    while (k + 1 < (int)(nodes->data.sequence.items.top - nodes->data.sequence.items.start) &&
           first[k + 1] <= i)
      k++;
    yaml_node_t *entry = yaml_document_get_node(doc, nodes->data.sequence.items.start[k]);
    char msg[300];
    snprintf(msg, sizeof msg,
             "node %s is named twice (names must be unique; count N names "
             "nodes NAME-1..NAME-N)",
             cl->nodes[i].name);
    return field_error(path, map_get(doc, entry, "name"), k, "name", msg, err);
  }
  return FFDL_OK;
}

int ffdl_cluster_load_yaml(ffdl_cluster *cl, const char *path, char **err) {
  *err = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) {
    *err = yaml_error(path, NULL, "(file)", "cannot open the file");
    return FFDL_ENOENT;
  }
  yaml_parser_t parser;
  yaml_document_t doc;
  yaml_parser_initialize(&parser);
  yaml_parser_set_input_file(&parser, f);
  int rc = FFDL_OK;
  if (!yaml_parser_load(&parser, &doc)) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s:%d:%d: (file): YAML syntax error: %s", path,
             (int)parser.problem_mark.line + 1, (int)parser.problem_mark.column + 1,
             parser.problem ? parser.problem : "?");
    *err = strdup(msg);
    yaml_parser_delete(&parser);
    fclose(f);
    return FFDL_ESYNTAX;
  }
  yaml_node_t *root = yaml_document_get_root_node(&doc);
  yaml_node_t *nodes =
      root && root->type == YAML_MAPPING_NODE ? map_get(&doc, root, "nodes") : NULL;
  if (!nodes || nodes->type != YAML_SEQUENCE_NODE) {
    *err = yaml_error(path, root, "nodes", "a list of nodes is required");
    rc = FFDL_EINVALID;
  }
  size_t entries =
      rc ? 0 : (size_t)(nodes->data.sequence.items.top - nodes->data.sequence.items.start);
  size_t *first = calloc(entries + 1, sizeof *first);
  if (!first) rc = FFDL_ENOMEM;
  for (size_t k = 0; rc == FFDL_OK && k < entries; k++) {
    first[k] = cl->n;
    yaml_node_t *entry = yaml_document_get_node(&doc, nodes->data.sequence.items.start[k]);
    rc = load_node_entry(cl, &doc, entry, path, (int)k, err);
  }
  if (rc == FFDL_OK) rc = check_unique_names(cl, path, &doc, nodes, first, err);
  free(first);
  yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  fclose(f);
  return rc;
}
