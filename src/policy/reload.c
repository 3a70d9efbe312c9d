/*
 * reload.c: the live generation and its safe replacement.
 * Owns: reload triggers (file changes, debounced; explicit calls), the
 * checks a new generation must pass, the swap, the reload history. Must
 * not: let a rejected generation touch any job.
 */
#include "policy/reload.h"
#include "core/error.h"
#include "core/log.h"
#include "policy/policytest.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ffdl_policies {
  uv_loop_t *loop;
  ffdl_generation_opts opts;
  char *policies_dir, *lua_dir;
  ffdl_generation *active;
  ffdl_policies_swap_cb on_swap;
  void *ud;
  uv_fs_event_t watch_dir, watch_tests;
  uv_timer_t debounce;
  unsigned debounce_ms;
  int watching;
  unsigned long reloads, failures;
  long long loaded_ms;
  char *last_error;
};

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The conformance checks, through the one entry point into Lua. */
static int check_conformance(ffdl_generation *gen, char **err) {
  ffdl_sandbox *sb = ffdl_generation_sandbox(gen);
  lua_State *L = ffdl_sandbox_state(sb);
  ffdl_generation_push_runtime(gen, "conformance");
  lua_getfield(L, -1, "check");
  lua_remove(L, -2);
  ffdl_generation_push_policies(gen);
  ffdl_generation_push_runtime(gen, "testing");
  char *call_err = NULL;
  if (ffdl_policy_call(sb, "conformance", 2, 1, 0, &call_err) != FFDL_OK) {
    *err = call_err;
    return FFDL_EINVALID;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  lua_Integer n = lua_istable(L, -2) ? luaL_len(L, -2) : 0;
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -2, i);
    if (i > 1) luaL_addchar(&b, '\n');
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  int rc = n > 0 ? FFDL_EINVALID : FFDL_OK;
  if (rc) *err = strdup(lua_tostring(L, -1));
  lua_pop(L, 2);
  return rc;
}

int ffdl_policies_check_hooks(ffdl_generation *gen, char **err) {
  *err = NULL;
  return check_conformance(gen, err);
}

int ffdl_policies_check(ffdl_generation *gen, const char *dir, char **err) {
  *err = NULL;
  int rc = check_conformance(gen, err);
  if (rc != FFDL_OK) return rc;
  char *out = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&out, &len);
  int passed = 0, failed = 0;
  rc = f ? ffdl_policy_test_run(gen, dir, f, &passed, &failed) : FFDL_ENOMEM;
  if (f) fclose(f);
  if (rc != FFDL_OK) {
    /* keep only the failures and the summary */
    size_t cap = len + 64, used = 0;
    *err = malloc(cap);
    if (*err) {
      (*err)[0] = '\0';
      for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"))
        if (!strncmp(line, "FAIL", 4) || strstr(line, " passed, "))
          used += (size_t)snprintf(*err + used, cap - used, "%s%s", used ? "\n" : "", line);
    }
  }
  free(out);
  return rc;
}

/* A fresh generation from the same files: compiled, checked, tested. The
 * tests run in a generation of their own, so nothing a test changes leaks
 * into the one that goes live. */
static int build(ffdl_policies *p, ffdl_generation **out, char **err) {
  *out = NULL;
  int rc = ffdl_generation_load(&p->opts, out, err);
  if (rc != FFDL_OK) return rc;
  ffdl_generation *tested = NULL;
  rc = ffdl_generation_load(&p->opts, &tested, err);
  if (rc == FFDL_OK) rc = ffdl_policies_check(tested, p->policies_dir, err);
  ffdl_generation_free(tested);
  if (rc != FFDL_OK) {
    ffdl_generation_free(*out);
    *out = NULL;
  }
  return rc;
}

int ffdl_policies_open(uv_loop_t *loop, const ffdl_generation_opts *opts,
                       ffdl_policies_swap_cb on_swap, void *ud, ffdl_policies **out, char **err) {
  *out = NULL;
  ffdl_policies *p = calloc(1, sizeof *p);
  if (!p) return FFDL_ENOMEM;
  p->loop = loop;
  p->policies_dir = strdup(opts->policies_dir);
  p->lua_dir = strdup(opts->lua_dir);
  p->opts = *opts;
  p->opts.policies_dir = p->policies_dir;
  p->opts.lua_dir = p->lua_dir;
  p->on_swap = on_swap;
  p->ud = ud;
  int rc = build(p, &p->active, err);
  if (rc != FFDL_OK) {
    ffdl_policies_free(p);
    return rc;
  }
  p->loaded_ms = now_ms();
  *out = p;
  return FFDL_OK;
}

void ffdl_policies_free(ffdl_policies *p) {
  if (!p) return;
  if (p->watching) {
    uv_close((uv_handle_t *)&p->watch_dir, NULL);
    uv_close((uv_handle_t *)&p->watch_tests, NULL);
    uv_close((uv_handle_t *)&p->debounce, NULL);
    uv_run(p->loop, UV_RUN_NOWAIT);
  }
  ffdl_generation_free(p->active);
  free(p->policies_dir);
  free(p->lua_dir);
  free(p->last_error);
  free(p);
}

ffdl_generation *ffdl_policies_active(ffdl_policies *p) {
  return p->active;
}

unsigned long ffdl_policies_failures(const ffdl_policies *p) {
  return p->failures;
}

int ffdl_policies_reload(ffdl_policies *p, char **err) {
  *err = NULL;
  ffdl_generation *next;
  p->reloads++;
  int rc = build(p, &next, err);
  if (rc != FFDL_OK) {
    p->failures++;
    free(p->last_error);
    p->last_error = strdup(*err ? *err : ffdl_strerror(rc));
    ffdl_log(FFDL_LOG_WARN, "policy reload rejected, generation %.12s stays: %s",
             ffdl_generation_hash(p->active), p->last_error);
    return rc;
  }
  if (strcmp(ffdl_generation_hash(next), ffdl_generation_hash(p->active)) == 0) {
    ffdl_generation_free(next); /* nothing changed */
    return FFDL_OK;
  }
  /* All Lua runs on this thread, so no hook call is in flight here: the
   * swap falls between two scheduling cycles by construction. */
  ffdl_generation *old = p->active;
  p->active = next;
  p->loaded_ms = now_ms();
  free(p->last_error);
  p->last_error = NULL;
  if (p->on_swap) p->on_swap(p->ud, next, old);
  ffdl_log(FFDL_LOG_INFO, "policy generation %.12s is active (was %.12s)",
           ffdl_generation_hash(next), ffdl_generation_hash(old));
  ffdl_generation_free(old);
  return FFDL_OK;
}

static void on_debounced(uv_timer_t *t) {
  ffdl_policies *p = t->data;
  char *err = NULL;
  ffdl_policies_reload(p, &err);
  free(err);
}

static void on_change(uv_fs_event_t *h, const char *file, int events, int status) {
  (void)file, (void)events, (void)status;
  ffdl_policies *p = h->data;
  uv_timer_start(&p->debounce, on_debounced, p->debounce_ms, 0);
}

int ffdl_policies_watch(ffdl_policies *p, unsigned debounce_ms) {
  p->debounce_ms = debounce_ms;
  uv_timer_init(p->loop, &p->debounce);
  uv_fs_event_init(p->loop, &p->watch_dir);
  uv_fs_event_init(p->loop, &p->watch_tests);
  p->debounce.data = p->watch_dir.data = p->watch_tests.data = p;
  uv_unref((uv_handle_t *)&p->debounce);
  p->watching = 1;
  char tests[4096];
  snprintf(tests, sizeof tests, "%s/tests", p->policies_dir);
  int rc = uv_fs_event_start(&p->watch_dir, on_change, p->policies_dir, 0);
  uv_fs_event_start(&p->watch_tests, on_change, tests, 0); /* optional */
  uv_unref((uv_handle_t *)&p->watch_dir);
  uv_unref((uv_handle_t *)&p->watch_tests);
  return rc == 0 ? FFDL_OK : FFDL_EIO;
}

json_t *ffdl_policies_status(ffdl_policies *p) {
  return json_pack("{s:s,s:O,s:I,s:I,s:I,s:s?,s:s}", "hash", ffdl_generation_hash(p->active),
                   "files", ffdl_generation_files(p->active), "loaded_ms", (json_int_t)p->loaded_ms,
                   "reloads", (json_int_t)p->reloads, "failures", (json_int_t)p->failures,
                   "last_error", p->last_error, "directory", p->policies_dir);
}
