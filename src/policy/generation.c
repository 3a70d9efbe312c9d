/*
 * generation.c: loads one generation of policies and runtime Lua.
 * Owns: the file list, the content hash, the registry tables of loaded
 * modules and the hook context. Must not: call hooks for a job (the
 * orchestrator does, through ffdl_policy_call) or watch files.
 */
#include "policy/generation.h"
#include "core/error.h"
#include "core/file.h"
#include "core/log.h"

#include <dirent.h>
#include <lauxlib.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_POLICY_FILE (1u << 20)
#define MAX_FILES 256

/* Policy files every generation must have. */
static const char *const required_policies[] = {"defaults", "frameworks", "validate", NULL};

struct ffdl_generation {
  ffdl_sandbox *sb;
  char hash[65];
  char *policies_dir;
  json_t *files; /* [{name, sha256}] of the policy files */
};

static const char POLICIES_KEY = 'p';
static const char EXPLAINED_KEY = 'e'; /* messages of ctx:explain() since the last take */
static const char RUNTIME_KEY = 'r';

static int compare_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists DIR's *.lua files, sorted (caller frees each name and the array). */
static int list_lua_files(const char *dir, char ***names_out, size_t *n_out) {
  *names_out = NULL;
  *n_out = 0;
  DIR *d = opendir(dir);
  if (!d) return FFDL_ENOENT;
  char **names = calloc(MAX_FILES, sizeof *names);
  size_t n = 0;
  struct dirent *e;
  while (names && (e = readdir(d)) && n < MAX_FILES) {
    size_t len = strlen(e->d_name);
    if (len > 4 && strcmp(e->d_name + len - 4, ".lua") == 0 && e->d_name[0] != '.')
      names[n++] = strdup(e->d_name);
  }
  closedir(d);
  if (!names) return FFDL_ENOMEM;
  qsort(names, n, sizeof *names, compare_names);
  *names_out = names;
  *n_out = n;
  return FFDL_OK;
}

static void free_names(char **names, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
}

static char *format_error(const char *fmt, const char *a, const char *b) {
  size_t need = strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 1;
  char *out = malloc(need);
  if (out) snprintf(out, need, fmt, a, b ? b : "");
  return out;
}

static void record_file(ffdl_generation *gen, const char *name, const char *text, size_t len) {
  unsigned char digest[32];
  unsigned int n = 0;
  char hex[65];
  EVP_Digest(text, len, digest, &n, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  json_array_append_new(gen->files, json_pack("{s:s,s:s}", "name", name, "sha256", hex));
}

/* Loads DIR/NAME, runs it, and stores its table in registry[KEY][module]. */
static int load_module(ffdl_generation *gen, EVP_MD_CTX *md, const void *key, const char *dir,
                       const char *name, char **err) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  char *text;
  size_t len;
  int rc = ffdl_file_read(path, MAX_POLICY_FILE, &text, &len);
  if (rc != FFDL_OK) {
    *err = format_error("%s: cannot read: %s", path, ffdl_strerror(rc));
    return rc;
  }
  EVP_DigestUpdate(md, name, strlen(name) + 1);
  EVP_DigestUpdate(md, text, len);
  if (key == &POLICIES_KEY) record_file(gen, name, text, len);

  lua_State *L = ffdl_sandbox_state(gen->sb);
  char chunk[4200];
  snprintf(chunk, sizeof chunk, "@%s", path);
  ffdl_sandbox_push_env(L);
  rc = ffdl_sandbox_load(gen->sb, chunk, text, len, err);
  free(text);
  if (rc != FFDL_OK) return rc;
  rc = ffdl_policy_call(gen->sb, name, 0, 1, 0, err);
  if (rc == FFDL_ELIMIT && *err && !strstr(*err, name)) {
    char *located = format_error("%s: %s", path, *err); /* the cap names no file */
    if (located) free(*err), *err = located;
  }
  if (rc != FFDL_OK) return rc;
  if (!lua_istable(L, -1)) {
    *err = format_error("%s: must return a table, got %s", path, luaL_typename(L, -1));
    lua_pop(L, 1);
    return FFDL_EINVALID;
  }
  char module[256];
  snprintf(module, sizeof module, "%.*s", (int)(strlen(name) - 4), name);
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  lua_insert(L, -2);
  lua_setfield(L, -2, module);
  lua_pop(L, 1);
  return FFDL_OK;
}

static int load_dir(ffdl_generation *gen, EVP_MD_CTX *md, const void *key, const char *dir,
                    char **err) {
  char **names;
  size_t n;
  int rc = list_lua_files(dir, &names, &n);
  if (rc != FFDL_OK) {
    *err = format_error("%s: cannot open the directory: %s", dir, ffdl_strerror(rc));
    return rc;
  }
  lua_State *L = ffdl_sandbox_state(gen->sb);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  for (size_t i = 0; i < n && rc == FFDL_OK; i++)
    rc = load_module(gen, md, key, dir, names[i], err);
  free_names(names, n);
  return rc;
}

static int check_required(ffdl_generation *gen, char **err) {
  for (const char *const *name = required_policies; *name; name++) {
    ffdl_generation_push_policy(gen, *name);
    int present = lua_istable(ffdl_sandbox_state(gen->sb), -1);
    lua_pop(ffdl_sandbox_state(gen->sb), 1);
    if (!present) {
      *err = format_error("%s/%s.lua: required policy file is missing", gen->policies_dir, *name);
      return FFDL_EINVALID;
    }
  }
  return FFDL_OK;
}

int ffdl_generation_load(const ffdl_generation_opts *opts, ffdl_generation **out, char **err) {
  *out = NULL;
  *err = NULL;
  ffdl_generation *gen = calloc(1, sizeof *gen);
  if (!gen) return FFDL_ENOMEM;
  gen->policies_dir = strdup(opts->policies_dir);
  gen->files = json_array();
  int rc = ffdl_sandbox_new(&opts->limits, &gen->sb);
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  if (rc == FFDL_OK && (!md || !gen->policies_dir)) rc = FFDL_ENOMEM;
  if (rc == FFDL_OK) {
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    rc = load_dir(gen, md, &RUNTIME_KEY, opts->lua_dir, err);
  }
  if (rc == FFDL_OK) rc = load_dir(gen, md, &POLICIES_KEY, opts->policies_dir, err);
  if (rc == FFDL_OK) rc = check_required(gen, err);
  if (rc == FFDL_OK) {
    unsigned char digest[32];
    EVP_DigestFinal_ex(md, digest, NULL);
    for (int i = 0; i < 32; i++)
      snprintf(gen->hash + 2 * i, 3, "%02x", digest[i]);
    ffdl_sandbox_set_label(gen->sb, gen->hash); /* limit events name the generation */
  }
  EVP_MD_CTX_free(md);
  if (rc != FFDL_OK) {
    if (!*err) *err = strdup(ffdl_strerror(rc));
    ffdl_generation_free(gen);
    return rc;
  }
  ffdl_log(FFDL_LOG_DEBUG, "policy generation %.12s loaded from %s", gen->hash, gen->policies_dir);
  *out = gen;
  return FFDL_OK;
}

void ffdl_generation_free(ffdl_generation *gen) {
  if (!gen) return;
  ffdl_sandbox_free(gen->sb);
  free(gen->policies_dir);
  json_decref(gen->files);
  free(gen);
}

ffdl_sandbox *ffdl_generation_sandbox(ffdl_generation *gen) {
  return gen->sb;
}

const char *ffdl_generation_hash(const ffdl_generation *gen) {
  return gen->hash;
}

json_t *ffdl_generation_files(const ffdl_generation *gen) {
  return gen->files;
}

const char *ffdl_generation_policies_dir(const ffdl_generation *gen) {
  return gen->policies_dir;
}

static void push_module(ffdl_generation *gen, const void *key, const char *name) {
  lua_State *L = ffdl_sandbox_state(gen->sb);
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  if (lua_istable(L, -1))
    lua_getfield(L, -1, name);
  else
    lua_pushnil(L);
  lua_remove(L, -2);
}

void ffdl_generation_push_policy(ffdl_generation *gen, const char *name) {
  push_module(gen, &POLICIES_KEY, name);
}

void ffdl_generation_push_policies(ffdl_generation *gen) {
  lua_rawgetp(ffdl_sandbox_state(gen->sb), LUA_REGISTRYINDEX, &POLICIES_KEY);
}

void ffdl_generation_push_runtime(ffdl_generation *gen, const char *name) {
  push_module(gen, &RUNTIME_KEY, name);
}

/* ctx:explain(msg): appends to ctx.explanations, kept for the decision log. */
static int l_ctx_explain(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *msg = luaL_checkstring(L, 2);
  if (lua_getfield(L, 1, "explanations") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, 1, "explanations");
  }
  lua_pushstring(L, msg);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  /* and for the decision log, which C reads after the call */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &EXPLAINED_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &EXPLAINED_KEY);
  }
  lua_pushstring(L, msg);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

json_t *ffdl_generation_take_explanations(ffdl_generation *gen) {
  lua_State *L = ffdl_sandbox_state(gen->sb);
  json_t *out = json_array();
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &EXPLAINED_KEY) == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      if (lua_isstring(L, -1)) json_array_append_new(out, json_string(lua_tostring(L, -1)));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &EXPLAINED_KEY);
  return out;
}

void ffdl_generation_drop_explanations(ffdl_generation *gen) {
  lua_State *L = ffdl_sandbox_state(gen->sb);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &EXPLAINED_KEY) != LUA_TNIL) {
    lua_pushnil(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &EXPLAINED_KEY);
  }
  lua_pop(L, 1);
}

/* ctx.log(msg) or ctx:log(msg): one info line in the server log. */
static int l_ctx_log(lua_State *L) {
  const char *msg = luaL_checkstring(L, lua_istable(L, 1) ? 2 : 1);
  ffdl_log(FFDL_LOG_INFO, "policy: %s", msg);
  return 0;
}

void ffdl_generation_push_ctx(ffdl_generation *gen, const char *file) {
  lua_State *L = ffdl_sandbox_state(gen->sb);
  lua_createtable(L, 0, 8);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  lua_setfield(L, -2, "now");
  lua_pushcfunction(L, l_ctx_explain);
  lua_setfield(L, -2, "explain");
  lua_pushcfunction(L, l_ctx_log);
  lua_setfield(L, -2, "log");
  lua_pushstring(L, gen->hash);
  lua_setfield(L, -2, "generation");
  ffdl_generation_push_policy(gen, "defaults");
  lua_setfield(L, -2, "defaults");
  ffdl_generation_push_policy(gen, "frameworks");
  lua_setfield(L, -2, "frameworks");
  if (file) {
    lua_pushstring(L, file);
    lua_setfield(L, -2, "file");
  }
}
