/*
 * policytest.c: the runner behind `ffdl policy test` and a reload's checks.
 * Owns: finding test files, the test environment, reporting. Must not:
 * change the generation it tests beyond what the tests themselves do.
 */
#include "policy/policytest.h"
#include "core/error.h"
#include "core/file.h"

#include <dirent.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

static int compare_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted *.lua names in DIR (caller frees); n = 0 when DIR is missing. */
static char **test_files(const char *dir, size_t *n) {
  *n = 0;
  DIR *d = opendir(dir);
  if (!d) return NULL;
  size_t cap = 16;
  char **names = malloc(cap * sizeof *names);
  struct dirent *e;
  while (names && (e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (len < 5 || strcmp(e->d_name + len - 4, ".lua") != 0 || e->d_name[0] == '.') continue;
    if (*n == cap) {
      char **grown = realloc(names, (cap *= 2) * sizeof *names);
      if (!grown) break;
      names = grown;
    }
    names[(*n)++] = strdup(e->d_name);
  }
  closedir(d);
  if (names) qsort(names, *n, sizeof *names, compare_names);
  return names;
}

/* Pushes the env of one test file: T and policies on top of the sandbox. */
static void push_test_env(ffdl_generation *gen) {
  lua_State *L = ffdl_sandbox_state(ffdl_generation_sandbox(gen));
  ffdl_sandbox_push_env(L);
  ffdl_generation_push_runtime(gen, "testing");
  lua_setfield(L, -2, "T");
  ffdl_generation_push_policies(gen);
  lua_setfield(L, -2, "policies");
}

/* Sorted names of the test functions in the table at the top. */
static char **test_names(lua_State *L, size_t *n) {
  *n = 0;
  size_t cap = 16;
  char **names = malloc(cap * sizeof *names);
  lua_pushnil(L);
  while (names && lua_next(L, -2)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_isfunction(L, -1)) {
      if (*n == cap) {
        char **grown = realloc(names, (cap *= 2) * sizeof *names);
        if (!grown) {
          lua_pop(L, 2);
          break;
        }
        names = grown;
      }
      names[(*n)++] = strdup(lua_tostring(L, -2));
    }
    lua_pop(L, 1);
  }
  if (names) qsort(names, *n, sizeof *names, compare_names);
  return names;
}

static void run_file(ffdl_generation *gen, const char *dir, const char *name, FILE *out,
                     int *passed, int *failed) {
  ffdl_sandbox *sb = ffdl_generation_sandbox(gen);
  lua_State *L = ffdl_sandbox_state(sb);
  char path[4096], chunk[4200 + 8];
  if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return;
  snprintf(chunk, sizeof chunk, "@%s", path);
  char *text = NULL, *err = NULL;
  size_t len;
  int top = lua_gettop(L);
  if (ffdl_file_read(path, 1u << 20, &text, &len) != FFDL_OK) {
    fprintf(out, "FAIL %s: cannot read the file\n", path);
    (*failed)++;
    return;
  }
  push_test_env(gen);
  int rc = ffdl_sandbox_load(sb, chunk, text, len, &err);
  free(text);
  if (rc == FFDL_OK) rc = ffdl_policy_call(sb, name, 0, 1, 0, &err);
  if (rc == FFDL_OK && !lua_istable(L, -1)) {
    err = strdup("a test file must return a table of test functions");
    rc = FFDL_EINVALID;
  }
  if (rc != FFDL_OK) {
    fprintf(out, "FAIL %s: %s\n", path, err);
    free(err);
    (*failed)++;
    lua_settop(L, top);
    return;
  }
  size_t n;
  char **names = test_names(L, &n);
  for (size_t i = 0; i < n; i++) {
    lua_getfield(L, -1, names[i]);
    if (ffdl_policy_call(sb, names[i], 0, 0, 0, &err) == FFDL_OK) {
      fprintf(out, "ok %s %s\n", path, names[i]);
      (*passed)++;
    } else {
      fprintf(out, "FAIL %s %s: %s\n", path, names[i], err);
      free(err);
      (*failed)++;
    }
    free(names[i]);
  }
  free(names);
  lua_settop(L, top);
}

int ffdl_policy_test_run(ffdl_generation *gen, const char *dir, FILE *out, int *passed,
                         int *failed) {
  char tests_dir[4096];
  snprintf(tests_dir, sizeof tests_dir, "%s/tests", dir);
  *passed = *failed = 0;
  size_t n;
  char **files = test_files(tests_dir, &n);
  for (size_t i = 0; i < n; i++) {
    run_file(gen, tests_dir, files[i], out, passed, failed);
    free(files[i]);
  }
  free(files);
  fprintf(out, "%d passed, %d failed\n", *passed, *failed);
  return *failed ? FFDL_EINVALID : FFDL_OK;
}
