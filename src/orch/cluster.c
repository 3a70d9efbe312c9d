/*
 * cluster.c: nodes, their capacity and reservations, and the Lua view that
 * placement hooks score. Owns: capacity bookkeeping, GPU index assignment,
 * candidate filtering (in C, so that Lua only scores). Must not: decide
 * placements (scheduler.lua does) or launch anything.
 */
#include "orch/cluster.h"
#include "core/error.h"

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
} node;

struct ffdl_cluster {
  node *nodes;
  size_t n, cap;
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
  free(cl->nodes);
  free(cl);
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
  node *nd = &cl->nodes[cl->n];
  memset(nd, 0, sizeof *nd);
  nd->name = strdup(name);
  nd->gpu_type = gpu_type ? strdup(gpu_type) : NULL;
  nd->labels = labels ? json_deep_copy(labels) : json_object();
  nd->cpus = cpus;
  nd->memory = memory;
  nd->gpus = gpus;
  if (!nd->name || !nd->labels) return FFDL_ENOMEM;
  cl->n++;
  return FFDL_OK;
}

size_t ffdl_cluster_node_count(const ffdl_cluster *cl) {
  return cl->n;
}

int ffdl_cluster_find(const ffdl_cluster *cl, const char *name) {
  for (size_t i = 0; i < cl->n; i++)
    if (strcmp(cl->nodes[i].name, name) == 0) return (int)i;
  return -1;
}

const char *ffdl_cluster_node_name(const ffdl_cluster *cl, int idx) {
  return idx >= 0 && (size_t)idx < cl->n ? cl->nodes[idx].name : NULL;
}

static int type_matches(const node *nd, const char *gpu_type) {
  return !gpu_type || !*gpu_type || (nd->gpu_type && strcmp(nd->gpu_type, gpu_type) == 0);
}

int ffdl_cluster_reserve(ffdl_cluster *cl, int idx, const ffdl_request *req, int *gpu_ids) {
  node *nd = &cl->nodes[idx];
  if (nd->used_cpus + req->cpus > nd->cpus + 1e-9 || nd->used_memory + req->memory > nd->memory ||
      nd->used_gpus + req->gpus > nd->gpus || (req->gpus > 0 && !type_matches(nd, req->gpu_type)))
    return FFDL_ELIMIT;
  int picked = 0;
  for (int g = 0; g < nd->gpus && picked < req->gpus; g++) {
    if (nd->gpu_busy[g]) continue;
    nd->gpu_busy[g] = 1;
    gpu_ids[picked++] = g;
  }
  nd->used_cpus += req->cpus;
  nd->used_memory += req->memory;
  nd->used_gpus += req->gpus;
  return FFDL_OK;
}

void ffdl_cluster_release(ffdl_cluster *cl, int idx, const ffdl_request *req, const int *gpu_ids) {
  node *nd = &cl->nodes[idx];
  nd->used_cpus -= req->cpus;
  if (nd->used_cpus < 1e-9) nd->used_cpus = 0;
  nd->used_memory -= req->memory;
  nd->used_gpus -= req->gpus;
  for (int i = 0; i < req->gpus; i++)
    nd->gpu_busy[gpu_ids[i]] = 0;
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

json_t *ffdl_cluster_usage(const ffdl_cluster *cl) {
  double cpus = 0, used_cpus = 0;
  json_int_t gpus = 0, used_gpus = 0, mem = 0, used_mem = 0;
  for (size_t i = 0; i < cl->n; i++) {
    cpus += cl->nodes[i].cpus;
    used_cpus += cl->nodes[i].used_cpus;
    gpus += cl->nodes[i].gpus;
    used_gpus += cl->nodes[i].used_gpus;
    mem += (json_int_t)cl->nodes[i].memory;
    used_mem += (json_int_t)cl->nodes[i].used_memory;
  }
  return json_pack("{s:f,s:f,s:I,s:I,s:I,s:I}", "cpus_total", cpus, "cpus_used", used_cpus,
                   "gpus_total", gpus, "gpus_used", used_gpus, "memory_total", mem, "memory_used",
                   used_mem);
}

/* ---- the Lua view ---------------------------------------------------- */

typedef struct {
  ffdl_cluster *cl;
  int empty;
} view;

static const char VIEW_MT[] = "ffdl.ClusterView";

/* Pushes the node table hooks see.  [-0, +1, m] */
static void push_node(lua_State *L, const node *nd, int empty, double taken_cpus,
                      lua_Integer taken_mem, int taken_gpus) {
  lua_createtable(L, 0, 9);
  lua_pushstring(L, nd->name);
  lua_setfield(L, -2, "name");
  lua_pushnumber(L, nd->cpus - (empty ? 0 : nd->used_cpus) - taken_cpus);
  lua_setfield(L, -2, "free_cpus");
  lua_pushinteger(L, (lua_Integer)(nd->memory - (empty ? 0 : nd->used_memory)) - taken_mem);
  lua_setfield(L, -2, "free_memory");
  lua_pushinteger(L, nd->gpus - (empty ? 0 : nd->used_gpus) - taken_gpus);
  lua_setfield(L, -2, "free_gpus");
  lua_pushnumber(L, nd->cpus);
  lua_setfield(L, -2, "cpus");
  lua_pushinteger(L, (lua_Integer)nd->memory);
  lua_setfield(L, -2, "memory");
  lua_pushinteger(L, nd->gpus);
  lua_setfield(L, -2, "gpus");
  if (nd->gpu_type) {
    lua_pushstring(L, nd->gpu_type);
    lua_setfield(L, -2, "gpu_type");
  }
  lua_createtable(L, 0, (int)json_object_size(nd->labels));
  const char *key;
  json_t *value;
  json_object_foreach(nd->labels, key, value) {
    if (!json_is_string(value)) continue;
    lua_pushstring(L, json_string_value(value));
    lua_setfield(L, -2, key);
  }
  lua_setfield(L, -2, "labels");
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

/* Iterator state in upvalues: view, request, taken, next index. */
static int candidates_next(lua_State *L) {
  view *v = lua_touserdata(L, lua_upvalueindex(1));
  if (!v->cl) return luaL_error(L, "the cluster view is only valid during the hook call");
  int req = lua_upvalueindex(2), taken = lua_upvalueindex(3);
  lua_Integer i = lua_tointeger(L, lua_upvalueindex(4));
  double cpus = field_number(L, req, "cpus");
  lua_Number mem = field_number(L, req, "memory");
  int gpus = (int)field_number(L, req, "gpus");
  lua_getfield(L, req, "gpu_type");
  const char *gpu_type = lua_tostring(L, -1);
  for (; (size_t)i < v->cl->n; i++) {
    const node *nd = &v->cl->nodes[i];
    double tc;
    lua_Integer tm;
    int tg;
    taken_on(L, taken, nd->name, &tc, &tm, &tg);
    double free_cpus = nd->cpus - (v->empty ? 0 : nd->used_cpus) - tc;
    lua_Number free_mem = (lua_Number)(nd->memory - (v->empty ? 0 : nd->used_memory)) - tm;
    int free_gpus = nd->gpus - (v->empty ? 0 : nd->used_gpus) - tg;
    if (free_cpus + 1e-9 < cpus || free_mem < mem || free_gpus < gpus) continue;
    if (gpus > 0 && !type_matches(nd, gpu_type)) continue;
    lua_pushinteger(L, i + 1);
    lua_replace(L, lua_upvalueindex(4));
    push_node(L, nd, v->empty, tc, tm, tg);
    return 1;
  }
  lua_pushinteger(L, i);
  lua_replace(L, lua_upvalueindex(4));
  return 0;
}

static int l_candidates(lua_State *L) {
  check_view(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 3);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, candidates_next, 4);
  return 1;
}

static int l_nodes(lua_State *L) {
  check_view(L);
  lua_settop(L, 1);
  lua_newtable(L); /* no request: everything matches */
  lua_pushnil(L);
  lua_pushinteger(L, 0);
  lua_pushcclosure(L, candidates_next, 4);
  return 1;
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

/* Parses "16GiB", "64Gb", "512MiB" or a plain byte count. */
static int parse_bytes(const char *text, uint64_t *out) {
  char *end;
  double v = strtod(text, &end);
  if (end == text || v < 0) return -1;
  while (*end == ' ')
    end++;
  static const struct {
    const char *unit;
    double factor;
  } units[] = {{"", 1},      {"b", 1},
               {"kb", 1e3},  {"kib", 1024.0},
               {"mb", 1e6},  {"mib", 1048576.0},
               {"gb", 1e9},  {"gib", 1073741824.0},
               {"tb", 1e12}, {"tib", 1099511627776.0},
               {"k", 1e3},   {"m", 1e6},
               {"g", 1e9},   {"t", 1e12}};
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
    if (strcasecmp(end, units[i].unit) == 0) {
      *out = (uint64_t)(v * units[i].factor + 0.5);
      return 0;
    }
  }
  return -1;
}

static int load_node_entry(ffdl_cluster *cl, yaml_document_t *doc, yaml_node_t *entry,
                           const char *path, int index, char **err) {
  char field[64];
  snprintf(field, sizeof field, "nodes[%d]", index);
  if (entry->type != YAML_MAPPING_NODE) {
    *err = yaml_error(path, entry, field, "must be a mapping");
    return FFDL_EINVALID;
  }
  const char *name = scalar(map_get(doc, entry, "name"));
  const char *count_s = scalar(map_get(doc, entry, "count"));
  const char *cpus_s = scalar(map_get(doc, entry, "cpus"));
  const char *mem_s = scalar(map_get(doc, entry, "memory"));
  const char *gpus_s = scalar(map_get(doc, entry, "gpus"));
  const char *gpu_type = scalar(map_get(doc, entry, "gpu_type"));
  if (!name || !*name) {
    *err = yaml_error(path, entry, field, "name is required");
    return FFDL_EINVALID;
  }
  long count = count_s ? strtol(count_s, NULL, 10) : 0;
  double cpus = cpus_s ? strtod(cpus_s, NULL) : 0;
  long gpus = gpus_s ? strtol(gpus_s, NULL, 10) : 0;
  uint64_t memory = 0;
  if (!cpus_s || cpus <= 0) {
    *err = yaml_error(path, entry, field, "cpus must be a number > 0");
    return FFDL_EINVALID;
  }
  if (!mem_s || parse_bytes(mem_s, &memory) != 0) {
    *err = yaml_error(path, entry, field, "memory must be a size such as 64GiB");
    return FFDL_EINVALID;
  }
  if (gpus < 0 || gpus > FFDL_MAX_NODE_GPUS || count < 0 || count > 100000) {
    *err = yaml_error(path, entry, field, "gpus must be 0..64 and count 0..100000");
    return FFDL_EINVALID;
  }
  json_t *labels = json_object();
  yaml_node_t *lab = map_get(doc, entry, "labels");
  if (lab && lab->type == YAML_MAPPING_NODE) {
    for (yaml_node_pair_t *p = lab->data.mapping.pairs.start; p < lab->data.mapping.pairs.top;
         p++) {
      const char *k = scalar(yaml_document_get_node(doc, p->key));
      const char *v = scalar(yaml_document_get_node(doc, p->value));
      if (k && v) json_object_set_new(labels, k, json_string(v));
    }
  }
  int rc = FFDL_OK;
  if (count == 0) {
    rc = ffdl_cluster_add_node(cl, name, cpus, memory, (int)gpus, gpu_type, labels);
  } else {
    for (long i = 1; i <= count && rc == FFDL_OK; i++) {
      char full[256];
      snprintf(full, sizeof full, "%s-%ld", name, i);
      rc = ffdl_cluster_add_node(cl, full, cpus, memory, (int)gpus, gpu_type, labels);
    }
  }
  json_decref(labels);
  return rc;
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
  int index = 0;
  for (yaml_node_item_t *it = rc ? NULL : nodes->data.sequence.items.start;
       it && it < nodes->data.sequence.items.top && rc == FFDL_OK; it++, index++)
    rc = load_node_entry(cl, &doc, yaml_document_get_node(&doc, *it), path, index, err);
  yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  fclose(f);
  return rc;
}
