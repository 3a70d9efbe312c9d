/*
 * sched.c: the queue and the scheduling cycle.
 * Owns: trial order (scheduler.rank, kept sorted incrementally, or
 * scheduler.order over the whole queue), admission (budget.admit), gang
 * placement (scheduler.place), holds for a blocked job (scheduler.hold,
 * which is what makes backfill safe), the cheap C-side filters that keep
 * Lua out of the O(queue x nodes) path, and the GPU ledger. Must not: know
 * about processes, the job store, HTTP or the clock (NOW is passed in).
 */
#include "orch/sched.h"
#include "core/error.h"
#include "core/log.h"
#include "core/str.h"
#include "policy/ljson.h"

#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_SCAN_LIMIT 500 /* jobs looked at past the first blocked one */
#define MAX_FAILED_SHAPES 64

struct ffdl_sched {
  ffdl_cluster *cluster;
  ffdl_generation *gen;
  ffdl_sched_callbacks cb;
  void *ud;
  ffdl_ledger *ledger;
  ffdl_sched_job **queue; /* trial order for the first `sorted` entries */
  size_t n, cap, sorted, removed;
  size_t head; /* no job before this index: the start of every walk */
  int in_cycle;
  int usage_ref;                      /* this cycle's usage, built on first use */
  int ctx_ref, ctx_serial;            /* the generation's ctx (see push_ctx) */
  int module_refs[2], modules_serial; /* its policy modules (see push_hook) */
  double ctx_now;
  int gen_facts_serial; /* generation the two below were read from */
  int has_order;        /* scheduler.order() exists: the general path */
  long scan_limit;
  int gen_serial, need_resort;
  int rank_epoch; /* changes with scheduler.lua: every rank is computed again */
  uint64_t next_seq;
  double now;
  ffdl_sched_stats stats;
  /* the hold of the last cycle, kept while the same job is blocked first */
  ffdl_sched_job *hold_job;
  int hold_serial, hold_stops;
  int *held;
  size_t nheld, heldcap;
  /* distinct request shapes, so that "a job like this found no room in
   * this cycle" is one array lookup */
  struct shape *shapes;
  unsigned long *shape_failed; /* the cycle number it last failed in */
  size_t *shape_queued;        /* queued jobs of each shape */
  size_t nshapes, shapecap;
  /* shapes with queued jobs, and queued jobs with no shape (too many):
   * a cycle ends once every shape in the queue found no room */
  size_t live_shapes, unshaped_queued;
  /* per queue slot, what the walk behind a blocked job needs without
   * touching the job (most of those jobs are skipped: reading each one's
   * struct cost a cache miss per job); rebuilt after the queue moves and
   * when the generation changes */
  int *slots; /* SLOT_* or a shape id */
  size_t slots_cap;
  int slots_stale;
};

/* A queue slot: the job's shape id when the job is known to fit this
 * generation's cluster (the walk may skip it once its shape failed);
 * SLOT_LOOK when the walk must look at the job; SLOT_HOLE: no job. */
enum { SLOT_HOLE = -2, SLOT_LOOK = -1 };

typedef struct shape {
  ffdl_request req; /* gpu_type borrowed from the first job: not for later use */
  int learners, type_index;
  char *need; /* describe_request()'s text, made on first use; NULL in a cycle's copies */
} shape;

#define MAX_SHAPES 4096

typedef struct {
  shape failed[MAX_FAILED_SHAPES];
  size_t nfailed;
  size_t shapes_failed; /* distinct shapes that found no room in this cycle */
  int blocked;          /* a job found no room: later ones may only backfill */
  long scan_left;
  size_t placed;
} cycle;

int ffdl_sched_new(ffdl_cluster *cluster, ffdl_generation *gen, const ffdl_sched_callbacks *cb,
                   void *ud, ffdl_sched **out) {
  ffdl_sched *s = calloc(1, sizeof *s);
  if (!s || ffdl_ledger_new(&s->ledger) != FFDL_OK) {
    free(s);
    return FFDL_ENOMEM;
  }
  s->cluster = cluster;
  s->gen = gen;
  if (cb) s->cb = *cb;
  s->ud = ud;
  s->gen_serial = 1;
  s->rank_epoch = 1;
  *out = s;
  return FFDL_OK;
}

void ffdl_sched_free(ffdl_sched *s) {
  if (!s) return;
  free(s->held);
  for (size_t k = 0; k < s->nshapes; k++)
    free(s->shapes[k].need);
  free(s->shapes);
  free(s->shape_failed);
  free(s->shape_queued);
  free(s->slots);
  ffdl_ledger_free(s->ledger);
  free(s->queue);
  free(s);
}

/* The SHA-256 of policies/scheduler.lua in GEN, or "" (borrowed). */
static const char *scheduler_hash(ffdl_generation *gen) {
  size_t i;
  json_t *file;
  json_array_foreach(ffdl_generation_files(gen), i, file) {
    const char *name = json_string_value(json_object_get(file, "name"));
    if (name && strcmp(name, "scheduler.lua") == 0)
      return json_string_value(json_object_get(file, "sha256"));
  }
  return "";
}

void ffdl_sched_set_generation(ffdl_sched *s, ffdl_generation *gen) {
  /* Ranks stay valid while scheduler.lua is the same file: a reload of the
   * other policies must not make the next cycle rank 100,000 jobs again. */
  const char *before = s->gen ? scheduler_hash(s->gen) : "";
  if (strcmp(before, scheduler_hash(gen)) != 0) {
    s->rank_epoch++;
    s->need_resort = 1;
  }
  s->gen = gen;
  s->gen_serial++;
  s->slots_stale = 1; /* which jobs are known to fit is per generation */
}

size_t ffdl_sched_queued(const ffdl_sched *s) {
  return s->n - s->removed;
}

const ffdl_sched_stats *ffdl_sched_get_stats(const ffdl_sched *s) {
  return &s->stats;
}

ffdl_ledger *ffdl_sched_ledger(ffdl_sched *s) {
  return s->ledger;
}

/* ---- the queue ---------------------------------------------------------- */

static int allocate_slots(ffdl_sched_job *j) {
  if (j->nodes) return FFDL_OK;
  int per = j->req.gpus > 0 ? j->req.gpus : 1;
  j->nodes = calloc((size_t)j->learners, sizeof *j->nodes);
  j->gpu_ids = calloc((size_t)j->learners * (size_t)per, sizeof *j->gpu_ids);
  return j->nodes && j->gpu_ids ? FFDL_OK : FFDL_ENOMEM;
}

static int same_shape(const shape *a, const ffdl_sched_job *j) {
  return a->learners == j->learners && a->type_index == j->type_index &&
         a->req.gpus == j->req.gpus && a->req.cpus == j->req.cpus && a->req.memory == j->req.memory;
}

/* The number of J's request shape, or -1 when there are too many. */
static int shape_of(ffdl_sched *s, const ffdl_sched_job *j) {
  for (size_t k = 0; k < s->nshapes; k++)
    if (same_shape(&s->shapes[k], j)) return (int)k;
  if (s->nshapes == MAX_SHAPES) return -1;
  if (s->nshapes == s->shapecap) {
    size_t cap = s->shapecap ? s->shapecap * 2 : 16;
    shape *grown = realloc(s->shapes, cap * sizeof *grown);
    if (!grown) return -1;
    s->shapes = grown;
    unsigned long *failed = realloc(s->shape_failed, cap * sizeof *failed);
    if (!failed) return -1;
    s->shape_failed = failed;
    size_t *queued = realloc(s->shape_queued, cap * sizeof *queued);
    if (!queued) return -1;
    s->shape_queued = queued;
    s->shapecap = cap;
  }
  s->shapes[s->nshapes] = (shape){j->req, j->learners, j->type_index, NULL};
  s->shape_failed[s->nshapes] = 0;
  s->shape_queued[s->nshapes] = 0;
  return (int)s->nshapes++;
}

/* Keeps live_shapes and unshaped_queued as J joins (+1) or leaves (-1). */
static void count_shape(ffdl_sched *s, const ffdl_sched_job *j, int delta) {
  if (j->shape_id < 0) {
    s->unshaped_queued += (size_t)delta;
    return;
  }
  size_t *queued = &s->shape_queued[j->shape_id];
  if (delta > 0 && (*queued)++ == 0) s->live_shapes++;
  if (delta < 0 && --(*queued) == 0) s->live_shapes--;
}

int ffdl_sched_enqueue(ffdl_sched *s, ffdl_sched_job *j, double now) {
  (void)now;
  if (j->queued) return FFDL_OK;
  if (j->learners < 1) j->learners = 1;
  if (allocate_slots(j) != FFDL_OK) return FFDL_ENOMEM;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    ffdl_sched_job **grown = realloc(s->queue, cap * sizeof *grown);
    if (!grown) return FFDL_ENOMEM;
    s->queue = grown;
    s->cap = cap;
  }
  j->seq = s->next_seq++;
  j->rank_serial = 0;
  j->type_index = j->req.gpus > 0 ? ffdl_cluster_type_index(s->cluster, j->req.gpu_type) : 0;
  j->shape_id = shape_of(s, j);
  count_shape(s, j, +1);
  j->queued = 1;
  j->queue_pos = s->n;
  s->queue[s->n++] = j;
  s->slots_stale = 1;
  return FFDL_OK;
}

void ffdl_sched_dequeue(ffdl_sched *s, ffdl_sched_job *j) {
  if (!j->queued) return;
  if (s->hold_job == j) s->hold_job = NULL;
  j->queued = 0;
  count_shape(s, j, -1);
  s->queue[j->queue_pos] = NULL;
  if (!s->slots_stale) s->slots[j->queue_pos] = SLOT_HOLE;
  s->removed++;
}

void ffdl_sched_job_clear(ffdl_sched_job *j) {
  free(j->nodes);
  free(j->gpu_ids);
  j->nodes = NULL;
  j->gpu_ids = NULL;
}

/* Drops the holes dequeued jobs left, keeping the order. Runs when holes
 * are half the queue, so that its cost spreads over many cycles. */
static void compact(ffdl_sched *s, int always) {
  if (!s->removed || (!always && s->removed * 2 < s->n)) return;
  size_t m = 0, sorted = 0;
  for (size_t i = 0; i < s->n; i++) {
    if (!s->queue[i]) continue;
    if (i < s->sorted) sorted++;
    s->queue[m] = s->queue[i];
    s->queue[m]->queue_pos = m;
    m++;
  }
  s->n = m;
  s->sorted = sorted;
  s->removed = 0;
  s->head = 0;
  s->slots_stale = 1;
}

static int by_rank(const void *a, const void *b) {
  const ffdl_sched_job *x = *(ffdl_sched_job *const *)a, *y = *(ffdl_sched_job *const *)b;
  if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* ---- pushing what hooks see ------------------------------------------ */

static lua_State *lua_of(ffdl_sched *s) {
  return ffdl_sandbox_state(ffdl_generation_sandbox(s->gen));
}

/* The policy files whose hooks the scheduler calls. */
typedef enum { POLICY_SCHEDULER, POLICY_BUDGET } policy_file;

/* Pushes the module policies/FILE.lua returned (nil when it has none),
 * from a registry ref made once per generation: finding it by name cost
 * as much as a third of a hook call's own overhead. */
static void push_module(ffdl_sched *s, policy_file file) {
  static const char *const names[] = {"scheduler", "budget"};
  lua_State *L = lua_of(s);
  if (s->modules_serial != s->gen_serial) { /* refs of an earlier generation went with its state */
    s->module_refs[POLICY_SCHEDULER] = s->module_refs[POLICY_BUDGET] = LUA_NOREF;
    s->modules_serial = s->gen_serial;
  }
  if (s->module_refs[file] != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->module_refs[file]);
    return;
  }
  ffdl_generation_push_policy(s->gen, names[file]);
  lua_pushvalue(L, -1);
  s->module_refs[file] = luaL_ref(L, LUA_REGISTRYINDEX); /* LUA_REFNIL for nil */
}

/* Pushes policies/FILE.lua's function NAME, or nothing: 1 when pushed.
 * Looked up per call: a policy may replace its own functions. */
static int push_hook(ffdl_sched *s, policy_file file, const char *name) {
  lua_State *L = lua_of(s);
  push_module(s, file);
  if (lua_istable(L, -1) && ffdl_raw_field(L, -1, name) == LUA_TFUNCTION) {
    lua_remove(L, -2);
    return 1;
  }
  lua_settop(L, lua_gettop(L) - (lua_istable(L, -1) ? 1 : 2));
  return 0;
}

static int has_hook(ffdl_sched *s, policy_file file, const char *name) {
  if (!push_hook(s, file, name)) return 0;
  lua_pop(lua_of(s), 1);
  return 1;
}

/*
 * The job table's own fields come from a Lua table constructor: its keys
 * are constants of the function, so setting each is one VM step, where
 * lua_setfield looked each key's string up first (building job tables,
 * twice per placement, was a sixth of the cycle). Compiled once per Lua
 * state, kept in the registry; it reads no global.
 */
static const char JOB_TABLE_LUA[] =
    "return function(id, user, team, gpu_type, attempt, learners, priority, submitted, cpus,\n"
    "                memory, gpus)\n"
    "  return {id = id, user = user, team = team, gpu_type = gpu_type, attempt = attempt,\n"
    "          learners = learners, priority = priority, submitted = submitted, cpus = cpus,\n"
    "          memory = memory, gpus = gpus}\n"
    "end\n";
static const char JOB_TABLE_KEY = 0;

static void push_job_constructor(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &JOB_TABLE_KEY) == LUA_TFUNCTION) return;
  lua_pop(L, 1);
  if (luaL_loadbufferx(L, JOB_TABLE_LUA, sizeof JOB_TABLE_LUA - 1, "=jobtable", "t") != LUA_OK)
    lua_error(L); /* only out of memory: a constant chunk */
  lua_call(L, 0, 1);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &JOB_TABLE_KEY);
}

static void push_string_or_nil(lua_State *L, const char *value) {
  /* not lua_pushstring: its cache is keyed by address, and every job's
   * strings have their own, so it missed after two string compares */
  if (value)
    lua_pushlstring(L, value, strlen(value));
  else
    lua_pushnil(L);
}

/* The spec's fields the runtime does not set, into the table at the top. */
static void add_spec_fields(lua_State *L, const json_t *spec) {
  const char *key;
  json_t *value;
  json_object_foreach((json_t *)spec, key, value) {
    lua_pushstring(L, key);
    if (lua_rawget(L, -2) != LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    lua_pop(L, 1);
    lua_pushstring(L, key);
    ffdl_ljson_push(L, value);
    lua_rawset(L, -3);
  }
}

void ffdl_sched_push_job(lua_State *L, const ffdl_sched_job *j) {
  lua_checkstack(L, 16);
  push_job_constructor(L);
  push_string_or_nil(L, j->id);
  push_string_or_nil(L, j->user);
  push_string_or_nil(L, j->team);
  push_string_or_nil(L, j->req.gpu_type);
  lua_pushinteger(L, j->attempt);
  lua_pushinteger(L, j->learners);
  lua_pushinteger(L, j->priority);
  lua_pushnumber(L, j->submitted);
  lua_pushnumber(L, j->req.cpus);
  lua_pushinteger(L, (lua_Integer)j->req.memory);
  lua_pushinteger(L, j->req.gpus);
  lua_call(L, 11, 1);
  if (json_is_object(j->spec)) add_spec_fields(L, j->spec);
}

/* One ctx per generation, shared by the hook calls (hooks are pure: a
 * fresh table per call cost a tenth of a placement); only ctx.now moves.
 * ctx.now is the cycle's time, which is virtual time in the simulator. */
static void push_ctx(ffdl_sched *s) {
  lua_State *L = lua_of(s);
  if (s->ctx_serial != s->gen_serial) {
    /* a ref of an earlier generation went with its Lua state */
    ffdl_generation_push_ctx(s->gen, NULL);
    lua_pushvalue(L, -1);
    s->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    s->ctx_serial = s->gen_serial;
    s->ctx_now = s->now - 1;
  } else {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ctx_ref);
    /* ctx.explanations is what this call explained: not the last call's
     * (kept, the list grew with every call until the memory cap) */
    lua_pushliteral(L, "explanations");
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  if (s->ctx_now != s->now) { /* raw: hooks can reach ctx, and set it a metatable */
    lua_pushliteral(L, "now");
    lua_pushnumber(L, s->now);
    lua_rawset(L, -3);
    s->ctx_now = s->now;
  }
}

/* Calls the function below NARGS arguments with the hook's limits. */
static int call(ffdl_sched *s, const char *what, int nargs, int nres, char **err) {
  return ffdl_policy_call(ffdl_generation_sandbox(s->gen), what, nargs, nres, 0, err);
}

static void decide(ffdl_sched *s, ffdl_sched_job *j, const char *hook, const char *outcome,
                   const char *reason) {
  if (!s->cb.decision) { /* nobody keeps decisions (the simulator) */
    ffdl_generation_drop_explanations(s->gen);
    return;
  }
  s->cb.decision(s->ud, j, hook, outcome, reason, ffdl_generation_take_explanations(s->gen));
}

static void waiting(ffdl_sched *s, ffdl_sched_job *j, const char *reason) {
  if (s->cb.waiting) s->cb.waiting(s->ud, j, reason);
}

/* A decision that leaves the job waiting, for WHY. */
static void keeps_waiting(ffdl_sched *s, ffdl_sched_job *j, const char *hook, const char *outcome,
                          const char *why) {
  decide(s, j, hook, outcome, why);
  waiting(s, j, why);
}

/* The same, for WHY freed here. */
static void still_waiting(ffdl_sched *s, ffdl_sched_job *j, const char *hook, const char *outcome,
                          char *why) {
  keeps_waiting(s, j, hook, outcome, why);
  free(why);
}

/* ---- usage, for budget.admit --------------------------------------- */

/* usage:gpu_hours(kind, name, window_s): "team" or "user". */
static int l_gpu_hours(lua_State *L) {
  ffdl_sched *s = lua_touserdata(L, lua_upvalueindex(1));
  const char *kind = luaL_checkstring(L, 2);
  const char *name = luaL_checkstring(L, 3);
  lua_Number window = luaL_checknumber(L, 4);
  ffdl_ledger_kind k;
  if (strcmp(kind, "team") == 0)
    k = FFDL_LEDGER_TEAM;
  else if (strcmp(kind, "user") == 0)
    k = FFDL_LEDGER_USER;
  else
    return luaL_argerror(L, 2, "\"team\" or \"user\"");
  lua_pushnumber(L, ffdl_ledger_gpu_hours(s->ledger, k, name, window, s->now));
  return 1;
}

static void push_holder(void *ud, const char *name, int gpus, int jobs) {
  lua_State *L = ud;
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, gpus);
  lua_setfield(L, -2, "gpus");
  lua_pushinteger(L, jobs);
  lua_setfield(L, -2, "jobs");
  lua_setfield(L, -2, name);
}

/* usage.by_team and usage.by_user are built on first use in a cycle:
 * most admissions never look at them. */
static int l_usage_index(lua_State *L) {
  ffdl_sched *s = lua_touserdata(L, lua_upvalueindex(1));
  const char *key = lua_tostring(L, 2);
  if (key && strcmp(key, "gpu_hours") == 0) {
    lua_pushlightuserdata(L, s);
    lua_pushcclosure(L, l_gpu_hours, 1);
    return 1;
  }
  int team = key && strcmp(key, "by_team") == 0, user = key && strcmp(key, "by_user") == 0;
  if (!team && !user) return 0;
  lua_newtable(L);
  ffdl_ledger_each_holder(s->ledger, team ? FFDL_LEDGER_TEAM : FFDL_LEDGER_USER, push_holder, L);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  lua_rawset(L, 1);
  return 1;
}

static void set_number(lua_State *L, const char *key, lua_Number v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, key);
}

static void set_integer(lua_State *L, const char *key, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, key);
}

/* {cpus_total, cpus_used, gpus_total, gpus_used, memory_total, memory_used,
 *  by_team = {[t] = {gpus, jobs}}, by_user = ...} with usage:gpu_hours(). */
static void push_usage(ffdl_sched *s) {
  lua_State *L = lua_of(s);
  ffdl_cluster_sums t;
  ffdl_cluster_totals(s->cluster, &t);
  lua_createtable(L, 0, 8);
  set_number(L, "cpus_total", t.cpus);
  set_number(L, "cpus_used", t.used_cpus);
  set_integer(L, "gpus_total", t.gpus);
  set_integer(L, "gpus_used", t.used_gpus);
  set_integer(L, "memory_total", (lua_Integer)t.memory);
  set_integer(L, "memory_used", (lua_Integer)t.used_memory);
  lua_createtable(L, 0, 1);
  lua_pushlightuserdata(L, s);
  lua_pushcclosure(L, l_usage_index, 1);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
}

/* The usage table of this cycle, built on the first admit() call. */
static void push_cycle_usage(ffdl_sched *s) {
  lua_State *L = lua_of(s);
  if (s->usage_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->usage_ref);
    return;
  }
  push_usage(s);
  lua_pushvalue(L, -1);
  s->usage_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* t[key] = t[key] + delta, for the table at absolute index T. */
static void add_to_field(lua_State *L, int t, const char *key, lua_Number delta) {
  lua_getfield(L, t, key);
  int whole = lua_isinteger(L, -1) || lua_isnil(L, -1);
  lua_Number n = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (whole)
    lua_pushinteger(L, (lua_Integer)(n + delta));
  else
    lua_pushnumber(L, n + delta);
  lua_setfield(L, t, key);
}

/* What a placement adds to the usage table at IDX (absolute). */
static void add_usage(lua_State *L, int idx, const ffdl_sched_job *j) {
  int gpus = j->req.gpus * j->learners;
  add_to_field(L, idx, "gpus_used", gpus);
  lua_getfield(L, idx, "cpus_used");
  lua_Number cpus = lua_tonumber(L, -1) + j->req.cpus * j->learners;
  lua_pop(L, 1);
  lua_pushnumber(L, cpus);
  lua_setfield(L, idx, "cpus_used");
  const char *keys[2] = {"by_team", "by_user"}, *names[2] = {j->team, j->user};
  for (int k = 0; k < 2; k++) {
    /* not built yet: it will be, from the ledger, which has this job */
    if (!names[k] || (lua_pushstring(L, keys[k]), lua_rawget(L, idx)) != LUA_TTABLE) {
      if (names[k]) lua_pop(L, 1);
      continue;
    }
    if (lua_getfield(L, -1, names[k]) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_createtable(L, 0, 2);
      lua_pushvalue(L, -1);
      lua_setfield(L, -3, names[k]);
    }
    int entry = lua_gettop(L);
    add_to_field(L, entry, "gpus", gpus);
    add_to_field(L, entry, "jobs", 1);
    lua_pop(L, 2);
  }
}

/* ---- trial order ------------------------------------------------------ */

/* scheduler.rank(job, ctx): a number, lower goes first. */
static void rank_job(ffdl_sched *s, ffdl_sched_job *j) {
  lua_State *L = lua_of(s);
  j->rank_serial = s->rank_epoch;
  j->rank = j->submitted;
  if (!push_hook(s, POLICY_SCHEDULER, "rank")) return;
  ffdl_sched_push_job(L, j);
  push_ctx(s);
  char *err = NULL;
  if (call(s, "rank", 2, 1, &err) != FFDL_OK) {
    char *why = ffdl_strdup_printf("rank() failed, the job keeps its submission order: %s", err);
    decide(s, j, "order", "error", why);
    free(why);
    free(err);
    return;
  }
  int isnum = 0;
  lua_Number rank = lua_tonumberx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || rank != rank) {
    decide(s, j, "order", "error",
           "rank() must return a number; the job keeps its submission order");
    return;
  }
  j->rank = rank;
  char why[96] = "";
  if (s->cb.decision) /* formatting costs as much as the rest of this: only when kept */
    snprintf(why, sizeof why, "rank %.3f (the queue is tried lowest rank first)", rank);
  decide(s, j, "order", "ranked", why);
}

/* Ranks new jobs (all of them after a reload) and merges them into the
 * sorted part: O(new log new + queue) per cycle, not O(queue log queue). */
static void merge_new_jobs(ffdl_sched *s) {
  if (s->need_resort) s->sorted = 0, s->need_resort = 0;
  if (s->sorted == s->n) return;
  compact(s, 1);
  for (size_t i = s->sorted; i < s->n; i++)
    if (s->queue[i]->rank_serial != s->rank_epoch) rank_job(s, s->queue[i]);
  size_t old = s->sorted, fresh = s->n - s->sorted;
  qsort(s->queue + old, fresh, sizeof *s->queue, by_rank);
  ffdl_sched_job **merged = malloc(s->n * sizeof *merged);
  if (!merged) {
    qsort(s->queue, s->n, sizeof *s->queue, by_rank);
  } else {
    size_t a = 0, b = old, m = 0;
    while (a < old || b < s->n)
      merged[m++] = b >= s->n || (a < old && by_rank(&s->queue[a], &s->queue[b]) <= 0)
                        ? s->queue[a++]
                        : s->queue[b++];
    memcpy(s->queue, merged, s->n * sizeof *merged);
    free(merged);
  }
  for (size_t i = 0; i < s->n; i++)
    s->queue[i]->queue_pos = i;
  s->sorted = s->n;
  s->slots_stale = 1;
}

/* scheduler.order(queue, ctx) over the whole queue, for policies that keep
 * the general hook: jobs it drops keep their place at the end. */
static void order_whole_queue(ffdl_sched *s) {
  lua_State *L = lua_of(s);
  compact(s, 1);
  if (s->n < 2 || !push_hook(s, POLICY_SCHEDULER, "order")) return;
  lua_createtable(L, (int)s->n, 0);
  lua_createtable(L, 0, (int)s->n); /* job table -> position */
  for (size_t i = 0; i < s->n; i++) {
    ffdl_sched_push_job(L, s->queue[i]);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -4, (lua_Integer)i + 1);
    lua_pushinteger(L, (lua_Integer)i);
    lua_rawset(L, -3);
  }
  lua_insert(L, -3); /* positions below the function */
  push_ctx(s);
  char *err = NULL;
  if (call(s, "order", 2, 1, &err) != FFDL_OK) {
    ffdl_log(FFDL_LOG_WARN, "order() failed, keeping submission order: %s", err);
    free(err);
    lua_pop(L, 1);
    return;
  }
  ffdl_sched_job **ordered = calloc(s->n, sizeof *ordered);
  size_t m = 0;
  if (ordered && lua_istable(L, -1)) {
    lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= len && m < s->n; i++) {
      lua_rawgeti(L, -1, i);
      int isnum = 0;
      lua_Integer pos = lua_rawget(L, -3) == LUA_TNUMBER ? lua_tointegerx(L, -1, &isnum) : -1;
      lua_pop(L, 1);
      if (isnum && pos >= 0 && (size_t)pos < s->n && s->queue[pos])
        ordered[m++] = s->queue[pos], s->queue[pos] = NULL;
    }
  }
  lua_pop(L, 2);
  for (size_t k = 0; ordered && k < s->n; k++)
    if (s->queue[k]) ordered[m++] = s->queue[k];
  if (ordered) {
    memcpy(s->queue, ordered, s->n * sizeof *ordered);
    for (size_t i = 0; i < s->n; i++)
      s->queue[i]->queue_pos = i;
    s->slots_stale = 1;
  }
  free(ordered);
  s->sorted = s->n;
}

/* ---- one job's turn ------------------------------------------------------ */

static void remember_failure(ffdl_sched *s, cycle *c, const ffdl_sched_job *j);

/* Did a job needing no more than J find no room earlier in this cycle? */
static int dominated(ffdl_sched *s, cycle *c, const ffdl_sched_job *j) {
  if (j->shape_id >= 0 && s->shape_failed[j->shape_id] == s->stats.cycles) return 1;
  for (size_t k = 0; k < c->nfailed; k++) {
    const shape *f = &c->failed[k];
    if (j->learners < f->learners || j->req.cpus < f->req.cpus || j->req.memory < f->req.memory ||
        j->req.gpus < f->req.gpus)
      continue;
    if (f->req.gpus > 0 && f->type_index != 0 && f->type_index != j->type_index) continue;
    if (j->shape_id >= 0) s->shape_failed[j->shape_id] = s->stats.cycles, c->shapes_failed++;
    return 1;
  }
  return 0;
}

static void remember_failure(ffdl_sched *s, cycle *c, const ffdl_sched_job *j) {
  if (j->shape_id >= 0) {
    if (s->shape_failed[j->shape_id] == s->stats.cycles) return;
    s->shape_failed[j->shape_id] = s->stats.cycles;
    c->shapes_failed++;
  }
  if (c->nfailed < MAX_FAILED_SHAPES)
    c->failed[c->nfailed++] = (shape){j->req, j->learners, j->type_index, NULL};
}

/* budget.admit(job, usage, ctx): 1 admitted, 0 not now. The job table is
 * at the top of the stack and stays there. */
static int admit(ffdl_sched *s, cycle *c, ffdl_sched_job *j) {
  lua_State *L = lua_of(s);
  if (!push_hook(s, POLICY_BUDGET, "admit")) return 1; /* no budget policy: admitted */
  s->stats.admit_calls++;
  lua_pushvalue(L, -2);
  push_cycle_usage(s);
  push_ctx(s);
  char *err = NULL;
  if (call(s, "admit", 3, 2, &err) != FFDL_OK) {
    still_waiting(s, j, "admit", "error",
                  ffdl_strdup_printf("admit() failed, the job stays queued: %s", err));
    free(err);
    return 0;
  }
  int ok = lua_toboolean(L, -2);
  if (ok) {
    decide(s, j, "admit", "admitted", NULL);
  } else {
    const char *reason = lua_tostring(L, -1);
    still_waiting(s, j, "admit", "not admitted",
                  ffdl_strdup_printf("admit(): %s", reason ? reason : "not admitted"));
  }
  lua_pop(L, 2);
  return ok;
}

/* Reads a node name, or a {node = name} table, at the top; pops it. */
static int pop_node(ffdl_sched *s, lua_State *L) {
  if (lua_istable(L, -1)) ffdl_raw_field(L, -1, "node"), lua_remove(L, -2);
  const char *name = lua_tostring(L, -1);
  int node = name ? ffdl_cluster_find(s->cluster, name) : -1;
  lua_pop(L, 1);
  return node;
}

enum { PLACE_NO_ROOM = -1, PLACE_FAILED = -2 };

/* scheduler.place(job, view, ctx) with the job table at the top. Fills
 * j->nodes and returns 0; or PLACE_NO_ROOM, or PLACE_FAILED when the hook
 * erred or ran out of time, with *reason (caller frees). */
static int call_place(ffdl_sched *s, ffdl_sched_job *j, int empty, char **reason) {
  lua_State *L = lua_of(s);
  *reason = NULL;
  if (!push_hook(s, POLICY_SCHEDULER, "place")) {
    *reason = strdup("policies/scheduler.lua has no place()");
    return PLACE_FAILED;
  }
  s->stats.place_calls++;
  lua_pushvalue(L, -2);
  void *view = ffdl_cluster_push_view(s->cluster, L, empty);
  push_ctx(s);
  char *err = NULL;
  int rc = call(s, "place", 3, 2, &err);
  ffdl_cluster_view_close(view); /* a view kept by the hook must not outlive the call */
  if (rc != FFDL_OK) {
    *reason = ffdl_strdup_printf("place() failed, the job stays queued: %s", err);
    free(err);
    return PLACE_FAILED;
  }
  int result = lua_istable(L, -2) ? 0 : PLACE_NO_ROOM;
  if (result) {
    const char *why = lua_tostring(L, -1);
    *reason = strdup(why ? why : "place() found no room");
  }
  for (int i = 0; result == 0 && i < j->learners; i++) {
    lua_rawgeti(L, -2, i + 1);
    j->nodes[i] = pop_node(s, L);
    if (j->nodes[i] < 0) {
      *reason = ffdl_strdup_printf("place() returned an unknown node for learner %d", i + 1);
      result = PLACE_FAILED;
    }
  }
  lua_pop(L, 2);
  return result;
}

static int reserve(ffdl_sched *s, ffdl_sched_job *j) {
  int per = j->req.gpus > 0 ? j->req.gpus : 1;
  for (int i = 0; i < j->learners; i++) {
    if (ffdl_cluster_reserve(s->cluster, j->nodes[i], &j->req, j->gpu_ids + i * per) != FFDL_OK) {
      for (int k = 0; k < i; k++)
        ffdl_cluster_release(s->cluster, j->nodes[k], &j->req, j->gpu_ids + k * per);
      return -1;
    }
  }
  return 0;
}

int ffdl_sched_adopt(ffdl_sched *s, ffdl_sched_job *j, const int *nodes, double now) {
  if (allocate_slots(j) != FFDL_OK) return FFDL_ENOMEM;
  memcpy(j->nodes, nodes, (size_t)j->learners * sizeof *nodes);
  if (reserve(s, j) != 0) return FFDL_ELIMIT;
  j->started = now;
  j->holding = 1;
  return ffdl_ledger_start(s->ledger, j->team, j->user, j->req.gpus * j->learners, now);
}

void ffdl_sched_release(ffdl_sched *s, ffdl_sched_job *j, double now) {
  if (!j->holding) return;
  int per = j->req.gpus > 0 ? j->req.gpus : 1;
  for (int i = 0; i < j->learners; i++)
    ffdl_cluster_release(s->cluster, j->nodes[i], &j->req, j->gpu_ids + i * per);
  ffdl_ledger_stop(s->ledger, j->team, j->user, j->req.gpus * j->learners, j->started, now);
  j->holding = 0;
}

/* "placed 2 learners on node-1, node-2" (distinct nodes, in order). */
static char *describe_placement(ffdl_sched *s, const ffdl_sched_job *j) {
  char *out = ffdl_strdup_printf("placed %d learner%s on", j->learners, j->learners > 1 ? "s" : "");
  for (int i = 0; out && i < j->learners; i++) {
    int seen = 0;
    for (int k = 0; k < i; k++)
      seen |= j->nodes[k] == j->nodes[i];
    if (seen) continue;
    char *longer = ffdl_strdup_printf("%s%s %s", out, i ? "," : "",
                                      ffdl_cluster_node_name(s->cluster, j->nodes[i]));
    free(out);
    out = longer;
  }
  return out;
}

static void leave_queue_placed(ffdl_sched *s, cycle *c, ffdl_sched_job *j) {
  lua_State *L = lua_of(s);
  ffdl_sched_dequeue(s, j);
  j->started = s->now;
  j->holding = 1;
  ffdl_ledger_start(s->ledger, j->team, j->user, j->req.gpus * j->learners, s->now);
  if (s->usage_ref != LUA_NOREF) { /* else it is built later, from the ledger */
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->usage_ref);
    add_usage(L, lua_gettop(L), j);
    lua_pop(L, 1);
  }
  s->stats.placements++;
  c->placed++;
  char *how = s->cb.decision ? describe_placement(s, j) : NULL; /* nobody keeps it otherwise */
  decide(s, j, "place", "placed", how);
  if (s->cb.placed) s->cb.placed(s->ud, j, how ? how : "placed");
  free(how);
}

/* What the queue slot of J says (see SLOT_LOOK). */
static int slot_of(const ffdl_sched *s, const ffdl_sched_job *j) {
  return j->shape_id >= 0 && j->fit_checked == s->gen_serial ? j->shape_id : SLOT_LOOK;
}

/* J can fit this cluster (in this generation's view): noted on the job
 * and in its queue slot. */
static void mark_fits(ffdl_sched *s, ffdl_sched_job *j) {
  j->fit_checked = s->gen_serial;
  if (!s->slots_stale && j->queued) s->slots[j->queue_pos] = slot_of(s, j);
}

/* Could J ever fit, on an empty cluster? Asked once per job and generation. */
static int never_fits(ffdl_sched *s, ffdl_sched_job *j, json_t **explained) {
  if (j->fit_checked == s->gen_serial) return 0;
  /* C answers for the room; place() is asked only to say why it never fits */
  if (ffdl_cluster_could_ever_fit(s->cluster, &j->req, j->learners)) {
    mark_fits(s, j);
    return 0;
  }
  char *never = NULL;
  int fits = call_place(s, j, 1, &never) != PLACE_NO_ROOM;
  json_decref(ffdl_generation_take_explanations(s->gen)); /* the probe's */
  if (fits) {
    mark_fits(s, j);
    free(never);
    return 0;
  }
  char *nodes =
      ffdl_cluster_node_count(s->cluster) <= 16 ? ffdl_cluster_describe(s->cluster) : NULL;
  char *why = nodes
                  ? ffdl_strdup_printf("%s; nodes: %s; it can never fit this cluster", never, nodes)
                  : ffdl_strdup_printf("%s; it can never fit this cluster of %zu nodes", never,
                                       ffdl_cluster_node_count(s->cluster));
  free(nodes);
  free(never);
  ffdl_sched_dequeue(s, j);
  if (s->cb.decision)
    s->cb.decision(s->ud, j, "place", "never fits", why, *explained);
  else
    json_decref(*explained);
  *explained = NULL;
  if (s->cb.never_fits) s->cb.never_fits(s->ud, j, why);
  free(why);
  return 1;
}

/* scheduler.hold(job, cluster, ctx) for the first blocked job: the nodes
 * it returns take no other job this cycle, so backfill cannot delay it.
 * Returns 0 to go on, -1 to end the cycle (no hook, or it said nil). */
static int keep_held(ffdl_sched *s, int node) {
  if (s->nheld == s->heldcap) {
    size_t cap = s->heldcap ? s->heldcap * 2 : 8;
    int *grown = realloc(s->held, cap * sizeof *grown);
    if (!grown) return FFDL_ENOMEM;
    s->held = grown;
    s->heldcap = cap;
  }
  s->held[s->nheld++] = node;
  return ffdl_cluster_hold(s->cluster, node);
}

/* The same job is blocked first again: it keeps the nodes it held, so
 * that they go on draining towards it (and hold() is not called). */
static int hold_again(ffdl_sched *s, ffdl_sched_job *j) {
  if (s->hold_job != j || s->hold_serial != s->gen_serial) return 0;
  for (size_t k = 0; k < s->nheld; k++)
    ffdl_cluster_hold(s->cluster, s->held[k]);
  return 1;
}

static int hold_for(ffdl_sched *s, ffdl_sched_job *j) {
  lua_State *L = lua_of(s);
  if (hold_again(s, j)) return s->hold_stops ? -1 : 0;
  s->hold_job = j;
  s->hold_serial = s->gen_serial;
  s->hold_stops = 1;
  s->nheld = 0;
  if (!push_hook(s, POLICY_SCHEDULER, "hold")) return s->hold_stops = 0; /* every job is tried */
  lua_pushvalue(L, -2);
  void *view = ffdl_cluster_push_view(s->cluster, L, 0);
  push_ctx(s);
  char *err = NULL;
  int rc = call(s, "hold", 3, 1, &err);
  ffdl_cluster_view_close(view);
  if (rc != FFDL_OK) {
    char *why = ffdl_strdup_printf("hold() failed, no job may pass this one now: %s", err);
    decide(s, j, "hold", "holding", why);
    free(why);
    free(err);
    return -1;
  }
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    decide(s, j, "hold", "holding", "no job may pass this one (hold() returned nil)");
    return -1;
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    int node = pop_node(s, L);
    if (node >= 0) keep_held(s, node);
  }
  lua_pop(L, 1);
  s->hold_stops = 0;
  char why[96];
  snprintf(why, sizeof why, "%lld node(s) kept for this job; smaller jobs may use the others",
           (long long)n);
  decide(s, j, "hold", "holding", why);
  return 0;
}

/* The job found no room. Returns -1 when the cycle must end. */
static int blocked(ffdl_sched *s, cycle *c, ffdl_sched_job *j, const char *reason) {
  remember_failure(s, c, j);
  json_t *explained = ffdl_generation_take_explanations(s->gen);
  if (never_fits(s, j, &explained)) return 0;
  if (s->cb.decision)
    s->cb.decision(s->ud, j, "place", "waiting", reason, explained);
  else
    json_decref(explained);
  waiting(s, j, reason);
  if (c->blocked) return 0;
  c->blocked = 1;
  return hold_for(s, j);
}

/* "needs 2 learners x 4 CPUs, 16.0 GiB, 1 GPU of type V100" (caller frees). */
static char *describe_request(const ffdl_sched_job *j) {
  char gpus[160] = "";
  if (j->req.gpus > 0)
    snprintf(gpus, sizeof gpus, ", %d GPU%s%s%s", j->req.gpus, j->req.gpus > 1 ? "s" : "",
             j->req.gpu_type ? " of type " : "", j->req.gpu_type ? j->req.gpu_type : "");
  return ffdl_strdup_printf("needs %d learner%s x %g CPUs, %.1f GiB%s", j->learners,
                            j->learners > 1 ? "s" : "", j->req.cpus,
                            (double)j->req.memory / (1u << 30), gpus);
}

/* J's describe_request() text, formatted once per shape (formatting the
 * numbers cost 3,000 instructions, for most jobs of a long queue); NULL
 * when out of memory. Borrowed, or *OWNED when J has no shape. */
static const char *request_text(ffdl_sched *s, const ffdl_sched_job *j, char **owned) {
  *owned = NULL;
  if (j->shape_id < 0) return *owned = describe_request(j);
  shape *sh = &s->shapes[j->shape_id];
  if (!sh->need) sh->need = describe_request(j);
  return sh->need;
}

/* A job behind the blocked one, for which C already knows there is no
 * room: skipped without a hook call. The first time, it gets a reason
 * from C. Returns 0 when the hooks must see it after all (it may never
 * fit: the policy says why). */
static int behind_blocked_job(ffdl_sched *s, cycle *c, ffdl_sched_job *j) {
  s->stats.skipped_by_filter++;
  remember_failure(s, c, j);
  if (j->fit_checked == s->gen_serial) return 1;
  if (!ffdl_cluster_could_ever_fit(s->cluster, &j->req, j->learners)) return 0;
  mark_fits(s, j);
  char *owned, why[512];
  const char *need = request_text(s, j, &owned);
  snprintf(why, sizeof why, "%s; no room now, and jobs ahead of it wait too", need ? need : "");
  free(owned);
  keeps_waiting(s, j, "place", "waiting", why);
  return 1;
}

/* One queued job's turn in a cycle. Returns -1 when the cycle must end. */
static int try_job(ffdl_sched *s, cycle *c, ffdl_sched_job *j) {
  lua_State *L = lua_of(s);
  int no_room = dominated(s, c, j) || !ffdl_cluster_could_fit(s->cluster, &j->req, j->learners);
  if (no_room && c->blocked && behind_blocked_job(s, c, j)) return 0;
  /* The first blocked job of a cycle: hooks see it once per generation,
   * so that its reason is the policy's; later cycles only hold for it. */
  if (no_room && j->fit_checked == s->gen_serial) {
    s->stats.skipped_by_filter++;
    remember_failure(s, c, j);
    c->blocked = 1;
    if (hold_again(s, j)) return s->hold_stops ? -1 : 0; /* no hook call: no job table */
    ffdl_sched_push_job(L, j);
    int rc = hold_for(s, j);
    lua_pop(L, 1);
    return rc;
  }
  ffdl_sched_push_job(L, j);
  int rc = 0;
  if (admit(s, c, j)) {
    char *reason = NULL;
    int placed = call_place(s, j, 0, &reason);
    if (placed == 0 && reserve(s, j) == 0) {
      leave_queue_placed(s, c, j);
    } else if (placed == 0) {
      decide(s, j, "place", "invalid", "place() chose nodes without room");
      waiting(s, j, "place() chose nodes without room; the job stays queued");
    } else if (placed == PLACE_FAILED) {
      /* the policy's failure, not a lack of room: other jobs are unaffected */
      keeps_waiting(s, j, "place", "error", reason);
    } else {
      rc = blocked(s, c, j, reason);
    }
    free(reason);
  }
  lua_pop(L, 1);
  return rc;
}

/* Fills the slot of every queue position; on failure the walk reads the
 * jobs themselves. */
static void rebuild_slots(ffdl_sched *s) {
  if (s->slots_cap < s->n) {
    size_t cap = s->n + s->n / 2 + 64;
    int *grown = realloc(s->slots, cap * sizeof *grown);
    if (!grown) return;
    s->slots = grown;
    s->slots_cap = cap;
  }
  for (size_t i = 0; i < s->n; i++)
    s->slots[i] = s->queue[i] ? slot_of(s, s->queue[i]) : SLOT_HOLE;
  s->slots_stale = 0;
}

/* Every shape in the queue found no room this cycle: nothing behind the
 * blocked job can start, and the walk ends. */
static int all_shapes_failed(const ffdl_sched *s, const cycle *c) {
  return !s->unshaped_queued && c->shapes_failed >= s->live_shapes;
}

/* Behind a blocked job, from slot I: steps over holes and over the jobs
 * known to fit some day whose shape found no room this cycle (they wait:
 * try_job would only count them, see behind_blocked_job), counting them
 * as the walk does, in a loop that reads only the slots and the shapes'
 * last failures (most of a cycle's walk is spent here). Returns where the
 * walk goes on: a job to look at, or N. */
static size_t skip_known_failures(ffdl_sched *s, cycle *c, size_t i, size_t n, size_t *holes) {
  if (all_shapes_failed(s, c)) return i; /* the walk ends below */
  const int *slots = s->slots;
  const unsigned long *failed = s->shape_failed, now = s->stats.cycles;
  long left = c->scan_left;
  size_t holes_here = 0;
  for (; i < n; i++) {
    int slot = slots[i];
    if (slot == SLOT_HOLE) {
      holes_here++;
      continue;
    }
    if (left <= 0 || slot < 0 || failed[slot] != now) break;
    left--;
  }
  s->stats.skipped_by_filter += (unsigned long)(c->scan_left - left);
  c->scan_left = left;
  *holes += holes_here;
  return i;
}

/* Moves the jobs in queue slots [FROM, TO) next to TO, in order, and
 * starts later walks there. Placed jobs leave holes where the walk goes
 * every cycle (behind the blocked job), long before half the queue is
 * holes and compact() runs; stepping over them cost more than the jobs. */
static void pack_walked(ffdl_sched *s, size_t from, size_t to) {
  size_t w = to;
  for (size_t i = to; i-- > from;) {
    ffdl_sched_job *j = s->queue[i];
    if (!j) continue;
    if (--w == i) continue;
    s->queue[w] = j;
    j->queue_pos = w;
    s->queue[i] = NULL;
    if (!s->slots_stale) {
      s->slots[w] = s->slots[i];
      s->slots[i] = SLOT_HOLE;
    }
  }
  s->head = w;
}

/* scheduler.config.scan_limit. */
static long scan_limit(ffdl_sched *s) {
  lua_State *L = lua_of(s);
  int top = lua_gettop(L);
  long limit = DEFAULT_SCAN_LIMIT;
  push_module(s, POLICY_SCHEDULER);
  if (lua_istable(L, -1) && ffdl_raw_field(L, -1, "config") == LUA_TTABLE) {
    ffdl_raw_field(L, -1, "scan_limit");
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0) limit = (long)lua_tointeger(L, -1);
  }
  lua_settop(L, top);
  return limit;
}

/* What a cycle needs to know of the generation, read once per generation. */
static void read_generation_facts(ffdl_sched *s) {
  if (s->gen_facts_serial == s->gen_serial) return;
  s->gen_facts_serial = s->gen_serial;
  s->has_order = has_hook(s, POLICY_SCHEDULER, "order");
  s->scan_limit = scan_limit(s);
}

size_t ffdl_sched_cycle(ffdl_sched *s, double now) {
  lua_State *L = lua_of(s);
  int top = lua_gettop(L);
  s->now = now;
  s->stats.cycles++;
  compact(s, 0);
  while (s->head < s->n && !s->queue[s->head])
    s->head++;
  if (s->head == s->n) return 0;
  ffdl_cluster_clear_holds(s->cluster);
  read_generation_facts(s);
  if (s->has_order)
    order_whole_queue(s);
  else
    merge_new_jobs(s);
  cycle c = {.scan_left = s->scan_limit};
  lua_settop(L, top);
  s->in_cycle = 1;
  s->usage_ref = LUA_NOREF;
  /* the queue may lose jobs (placed, never fits) while we walk it */
  size_t n = s->n, i, holes = 0;
  if (s->slots_stale) rebuild_slots(s);
  for (i = s->head; i < n; i++) {
    /* the slots answer without reading the job (stale only if out of memory) */
    int by_slot = !s->slots_stale;
    if (c.blocked && by_slot && (i = skip_known_failures(s, &c, i, n, &holes)) == n) break;
    ffdl_sched_job *j = s->queue[i];
    if (by_slot ? s->slots[i] == SLOT_HOLE : !j || !j->queued) {
      holes++;
      continue;
    }
    if (c.blocked && c.scan_left-- <= 0) break;
    if (c.blocked && all_shapes_failed(s, &c)) break;
    if (try_job(s, &c, j) != 0) break;
  }
  if (holes > 64 && holes * 2 > i - s->head) pack_walked(s, s->head, i);
  s->in_cycle = 0;
  luaL_unref(L, LUA_REGISTRYINDEX, s->usage_ref);
  lua_settop(L, top);
  return c.placed;
}
