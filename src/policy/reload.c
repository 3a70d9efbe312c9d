/*
 * reload.c: the live generation and its safe replacement.
 * Owns: reload triggers (file changes, debounced; explicit calls), the
 * checks a new generation must pass, the swap, the reload history and its
 * timings. Must not: let a rejected generation touch any job, or hold up
 * the loop for longer than the swap.
 *
 * Threads. A build (compile, hook checks, policy tests) runs on libuv's
 * thread pool, in two fresh Lua states that nothing else can reach until
 * the after-work callback hands the result back to the loop: this is the
 * one place where a lua_State is used off the loop thread, and it never
 * holds one the loop can see. Only the swap runs on the loop, between two
 * callbacks, so no hook call is in flight on the old generation (all hook
 * calls run on the loop). The old generation is closed on the thread pool,
 * since closing a Lua state takes far longer than the swap: by the next
 * build, before it loads anything, or by a closing job queued a little
 * after the swap when no build comes (waking a pool thread right at the
 * swap lets it take the loop's CPU on a busy machine). One build runs at a
 * time: requests made during a build share one more build after it.
 */
#include "policy/reload.h"
#include "core/error.h"
#include "core/log.h"
#include "policy/limits.h"
#include "policy/policytest.h"

#include <lauxlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Attempts when the files change between the tested and the live load. */
#define MAX_BUILD_ATTEMPTS 3
/* How long replaced generations wait for a build to close them. */
#define REAP_AFTER_MS 1000

/* A caller waiting for the result of a build. */
typedef struct waiter {
  ffdl_policies_done_cb done;
  void *ud;
  struct waiter *next;
} waiter;

/* A replaced or unused generation, waiting to be closed off the loop. */
typedef struct grave {
  ffdl_generation *gen;
  struct grave *next;
} grave;

/* One build on the thread pool. The worker closes GRAVES, reads OPTS and
 * writes NEXT, RC, ERR and BUILD_NS; the loop reads them in the after-work
 * callback. */
typedef struct build {
  uv_work_t req;
  ffdl_policies *p;
  grave *graves;             /* taken over from P when the build was queued */
  ffdl_generation_opts opts; /* strings borrowed from P, which outlives the build */
  ffdl_generation *next;
  int rc;
  char *err;
  uint64_t trigger_ns; /* the file event or request this build answers */
  uint64_t build_ns;   /* time spent on the thread pool */
  waiter *waiters;     /* answered when it ends */
} build;

/* Generations closed on the thread pool when no build came for them. */
typedef struct reaping {
  uv_work_t req;
  ffdl_policies *p;
  grave *graves;
} reaping;

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
  /* builds */
  build *building;     /* the build on the thread pool, or NULL */
  int again;           /* requests came during it: one more build after it */
  waiter *queued;      /* waiters of that next build */
  uint64_t trigger_ns; /* earliest trigger no build has started for yet; 0: none */
  /* generations to close off the loop */
  grave *graves;
  uv_timer_t reaper; /* when no build takes them (started lazily) */
  int reaper_started;
  /* teardown: memory goes when nothing on the loop refers to it */
  int closing;
  unsigned pending; /* handles closing and reaping jobs */
  /* timings (nanoseconds: uv_hrtime, and the loop thread's CPU clock) */
  unsigned long swaps;
  uint64_t last_pause_ns, max_pause_ns, last_reload_ns, max_reload_ns, last_build_ns;
  uint64_t last_pause_cpu_ns, max_pause_cpu_ns;
};

static uint64_t thread_cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

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
      char *save = NULL; /* strtok_r: a reload checks on the thread pool */
      for (char *line = out ? strtok_r(out, "\n", &save) : NULL; line;
           line = strtok_r(NULL, "\n", &save))
        if (!strncmp(line, "FAIL", 4) || strstr(line, " passed, "))
          used += (size_t)snprintf(*err + used, cap - used, "%s%s", used ? "\n" : "", line);
    }
  }
  free(out);
  return rc;
}

/* A fresh generation from the same files: compiled, checked, tested. The
 * tests run in a generation of their own, so nothing a test changes leaks
 * into the one that goes live; that one is loaded after the tested one is
 * closed (two Lua states at most, the live one included), and goes live
 * only if its hash is the tested one's. Runs on any thread: it touches no
 * state but its own. */
static int build_generation(const ffdl_generation_opts *opts, ffdl_generation **out, char **err) {
  *out = NULL;
  *err = NULL;
  for (int attempt = 0; attempt < MAX_BUILD_ATTEMPTS; attempt++) {
    ffdl_generation *tested = NULL;
    int rc = ffdl_generation_load(opts, &tested, err);
    if (rc != FFDL_OK) return rc;
    char hash[65];
    snprintf(hash, sizeof hash, "%s", ffdl_generation_hash(tested));
    rc = ffdl_policies_check(tested, opts->policies_dir, err);
    ffdl_generation_free(tested);
    if (rc != FFDL_OK) return rc;
    ffdl_generation *next = NULL;
    rc = ffdl_generation_load(opts, &next, err);
    if (rc != FFDL_OK) return rc;
    if (strcmp(ffdl_generation_hash(next), hash) == 0) {
      *out = next;
      return FFDL_OK;
    }
    ffdl_generation_free(next); /* a file changed in between: test what is there now */
  }
  char msg[512];
  snprintf(msg, sizeof msg, "%s: the policy files kept changing during the reload; reload again",
           opts->policies_dir);
  *err = strdup(msg);
  return FFDL_EINVALID;
}

/* Closes every generation on LIST and frees the list (any thread). */
static void close_graves(grave *list) {
  for (grave *g = list, *next; g; g = next) {
    next = g->next;
    ffdl_generation_free(g->gen);
    free(g);
  }
}

static void maybe_free(ffdl_policies *p) {
  if (!p->closing || p->building || p->pending) return;
  close_graves(p->graves);
  ffdl_generation_free(p->active);
  free(p->policies_dir);
  free(p->lua_dir);
  free(p->last_error);
  free(p);
}

int ffdl_policies_open(uv_loop_t *loop, const ffdl_generation_opts *opts,
                       ffdl_policies_swap_cb on_swap, void *ud, ffdl_policies **out, char **err) {
  *out = NULL;
  *err = NULL;
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
  int rc =
      p->policies_dir && p->lua_dir ? build_generation(&p->opts, &p->active, err) : FFDL_ENOMEM;
  if (rc != FFDL_OK) {
    ffdl_policies_free(p);
    return rc;
  }
  p->loaded_ms = now_ms();
  *out = p;
  return FFDL_OK;
}

static void answer(waiter *list, int rc, const char *err) {
  for (waiter *w = list, *next; w; w = next) {
    next = w->next;
    w->done(w->ud, rc, err);
    free(w);
  }
}

static void on_handle_closed(uv_handle_t *h) {
  ffdl_policies *p = h->data;
  p->pending--;
  maybe_free(p);
}

void ffdl_policies_free(ffdl_policies *p) {
  if (!p || p->closing) return;
  p->closing = 1;
  waiter *queued = p->queued;
  p->queued = NULL;
  answer(queued, FFDL_EIO, NULL);
  if (p->building) uv_cancel((uv_req_t *)&p->building->req); /* fails once it runs */
  if (p->watching) {
    p->pending += 3;
    uv_close((uv_handle_t *)&p->watch_dir, on_handle_closed);
    uv_close((uv_handle_t *)&p->watch_tests, on_handle_closed);
    uv_close((uv_handle_t *)&p->debounce, on_handle_closed);
  }
  if (p->reaper_started) {
    p->pending++;
    uv_close((uv_handle_t *)&p->reaper, on_handle_closed);
  }
  maybe_free(p);
}

ffdl_generation *ffdl_policies_active(ffdl_policies *p) {
  return p->active;
}

unsigned long ffdl_policies_failures(const ffdl_policies *p) {
  return p->failures;
}

static void reap_work(uv_work_t *req) {
  close_graves(((reaping *)req->data)->graves);
}

static void reap_done(uv_work_t *req, int status) {
  reaping *r = req->data;
  ffdl_policies *p = r->p;
  if (status == UV_ECANCELED) close_graves(r->graves);
  free(r);
  p->pending--;
  maybe_free(p);
}

/* No build came since the swap: close the old generations now. */
static void on_reap(uv_timer_t *t) {
  ffdl_policies *p = t->data;
  if (!p->graves || p->closing) return;
  reaping *r = malloc(sizeof *r);
  if (!r) return; /* the next build or the teardown takes them */
  r->p = p;
  r->graves = p->graves;
  r->req.data = r;
  if (uv_queue_work(p->loop, &r->req, reap_work, reap_done) != 0) {
    free(r);
    return;
  }
  p->graves = NULL;
  p->pending++;
}

/* Hands GEN (no longer active) to be closed off the loop: by the next
 * build, or by the reaper if none comes first. Here when that cannot be
 * arranged. */
static void retire(ffdl_policies *p, ffdl_generation *gen) {
  grave *g = malloc(sizeof *g);
  if (!g) {
    ffdl_generation_free(gen);
    return;
  }
  g->gen = gen;
  g->next = p->graves;
  p->graves = g;
  if (!p->reaper_started) {
    uv_timer_init(p->loop, &p->reaper);
    uv_unref((uv_handle_t *)&p->reaper);
    p->reaper.data = p;
    p->reaper_started = 1;
  }
  uv_timer_start(&p->reaper, on_reap, REAP_AFTER_MS, 0);
}

static void build_work(uv_work_t *req) {
  build *b = req->data;
  close_graves(b->graves); /* first: fewer Lua states alive at once */
  b->graves = NULL;
  uint64_t started = uv_hrtime();
  b->rc = build_generation(&b->opts, &b->next, &b->err);
  b->build_ns = uv_hrtime() - started;
}

static int start_build(ffdl_policies *p);

/* On the loop: the swap, or the record of a rejection; then the answers. */
static void build_done(uv_work_t *req, int status) {
  uint64_t entered = uv_hrtime(), entered_cpu = thread_cpu_ns();
  build *b = req->data;
  ffdl_policies *p = b->p;
  p->building = NULL;
  if (status == UV_ECANCELED || p->closing) {
    close_graves(b->graves); /* still there when the build never ran */
    ffdl_generation_free(b->next);
    answer(b->waiters, FFDL_EIO, NULL);
    free(b->err);
    free(b);
    maybe_free(p);
    return;
  }
  p->last_build_ns = b->build_ns;
  int rc = b->rc;
  if (rc != FFDL_OK) {
    p->failures++;
    free(p->last_error);
    p->last_error = strdup(b->err ? b->err : ffdl_strerror(rc));
    ffdl_log(FFDL_LOG_WARN, "policy reload rejected, generation %.12s stays: %s",
             ffdl_generation_hash(p->active), p->last_error ? p->last_error : "?");
  } else if (strcmp(ffdl_generation_hash(b->next), ffdl_generation_hash(p->active)) == 0) {
    retire(p, b->next); /* nothing changed */
  } else {
    ffdl_generation *old = p->active;
    p->active = b->next;
    if (p->on_swap) p->on_swap(p->ud, b->next, old);
    char old_hash[65];
    snprintf(old_hash, sizeof old_hash, "%s", ffdl_generation_hash(old));
    retire(p, old);
    uint64_t swapped = uv_hrtime();
    p->last_pause_cpu_ns = thread_cpu_ns() - entered_cpu;
    if (p->last_pause_cpu_ns > p->max_pause_cpu_ns) p->max_pause_cpu_ns = p->last_pause_cpu_ns;
    p->swaps++;
    p->last_pause_ns = swapped - entered;
    if (p->last_pause_ns > p->max_pause_ns) p->max_pause_ns = p->last_pause_ns;
    p->last_reload_ns = swapped - b->trigger_ns;
    if (p->last_reload_ns > p->max_reload_ns) p->max_reload_ns = p->last_reload_ns;
    p->loaded_ms = now_ms();
    free(p->last_error);
    p->last_error = NULL;
    ffdl_log(FFDL_LOG_INFO,
             "policy generation %.12s is active (was %.12s): built in %.1f ms, "
             "%.1f ms after the trigger, swapped in %.0f us",
             ffdl_generation_hash(p->active), old_hash, (double)b->build_ns / 1e6,
             (double)p->last_reload_ns / 1e6, (double)p->last_pause_ns / 1e3);
  }
  const char *why = p->last_error ? p->last_error : b->err ? b->err : ffdl_strerror(rc);
  answer(b->waiters, rc, rc == FFDL_OK ? NULL : why);
  free(b->err);
  free(b);
  if (p->again && !p->closing) start_build(p);
}

static int start_build(ffdl_policies *p) {
  build *b = calloc(1, sizeof *b);
  if (!b) return FFDL_ENOMEM;
  b->p = p;
  b->opts = p->opts;
  b->req.data = b;
  b->trigger_ns = p->trigger_ns ? p->trigger_ns : uv_hrtime();
  b->waiters = p->queued;
  b->graves = p->graves;
  if (uv_queue_work(p->loop, &b->req, build_work, build_done) != 0) {
    free(b);
    return FFDL_EIO;
  }
  p->graves = NULL;
  if (p->reaper_started) uv_timer_stop(&p->reaper);
  p->queued = NULL;
  p->again = 0;
  p->trigger_ns = 0;
  p->building = b;
  p->reloads++;
  /* the build reads every file after any change seen so far */
  if (p->watching) uv_timer_stop(&p->debounce);
  return FFDL_OK;
}

int ffdl_policies_reload(ffdl_policies *p, ffdl_policies_done_cb done, void *ud) {
  if (p->closing) return FFDL_EIO;
  if (done) {
    waiter *w = malloc(sizeof *w);
    if (!w) return FFDL_ENOMEM;
    w->done = done;
    w->ud = ud;
    w->next = NULL;
    waiter **tail = &p->queued;
    while (*tail)
      tail = &(*tail)->next;
    *tail = w;
  }
  if (!p->trigger_ns) p->trigger_ns = uv_hrtime();
  if (p->building) {
    p->again = 1;
    return FFDL_OK;
  }
  int rc = start_build(p);
  if (rc != FFDL_OK && done) {
    /* the callback is not called on failure: take the waiter back */
    waiter **w = &p->queued;
    while ((*w)->next)
      w = &(*w)->next;
    free(*w);
    *w = NULL;
  }
  return rc;
}

static void on_debounced(uv_timer_t *t) {
  ffdl_policies_reload(t->data, NULL, NULL);
}

static void on_change(uv_fs_event_t *h, const char *file, int events, int status) {
  (void)file, (void)events, (void)status;
  ffdl_policies *p = h->data;
  if (p->closing) return;
  if (!p->trigger_ns) p->trigger_ns = uv_hrtime();
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

void ffdl_policies_timings_get(const ffdl_policies *p, ffdl_policies_timings *out) {
  out->swaps = p->swaps;
  out->last_swap_pause_s = (double)p->last_pause_ns / 1e9;
  out->max_swap_pause_s = (double)p->max_pause_ns / 1e9;
  out->last_reload_s = (double)p->last_reload_ns / 1e9;
  out->max_reload_s = (double)p->max_reload_ns / 1e9;
  out->last_build_s = (double)p->last_build_ns / 1e9;
  out->last_swap_cpu_s = (double)p->last_pause_cpu_ns / 1e9;
  out->max_swap_cpu_s = (double)p->max_pause_cpu_ns / 1e9;
}

json_t *ffdl_policies_status(ffdl_policies *p) {
  json_t *doc =
      json_pack("{s:s,s:O,s:I,s:I,s:I,s:s?,s:s}", "hash", ffdl_generation_hash(p->active), "files",
                ffdl_generation_files(p->active), "loaded_ms", (json_int_t)p->loaded_ms, "reloads",
                (json_int_t)p->reloads, "failures", (json_int_t)p->failures, "last_error",
                p->last_error, "directory", p->policies_dir);
  if (!doc) return NULL;
  json_object_set_new(doc, "building", json_boolean(p->building != NULL));
  json_object_set_new(doc, "swaps", json_integer((json_int_t)p->swaps));
  json_object_set_new(doc, "last_build_ms", json_real((double)p->last_build_ns / 1e6));
  json_object_set_new(doc, "last_reload_ms", json_real((double)p->last_reload_ns / 1e6));
  json_object_set_new(doc, "max_reload_ms", json_real((double)p->max_reload_ns / 1e6));
  json_object_set_new(doc, "last_swap_pause_us", json_real((double)p->last_pause_ns / 1e3));
  json_object_set_new(doc, "max_swap_pause_us", json_real((double)p->max_pause_ns / 1e3));
  json_object_set_new(doc, "last_swap_cpu_us", json_real((double)p->last_pause_cpu_ns / 1e3));
  json_object_set_new(doc, "max_swap_cpu_us", json_real((double)p->max_pause_cpu_ns / 1e3));
  json_object_set_new(
      doc, "lua_bytes",
      json_integer((json_int_t)ffdl_sandbox_memory_used(ffdl_generation_sandbox(p->active))));
  json_object_set_new(doc, "limit_events", ffdl_policy_limit_events());
  return doc;
}
