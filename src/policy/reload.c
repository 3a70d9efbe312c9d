/*
 * reload.c: the live generation and its safe replacement.
 * Owns: reload triggers (file changes, debounced; explicit calls), the
 * checks a new generation must pass, the swap, the reload history and its
 * timings. Must not: let a rejected generation touch any job, or hold up
 * the loop for longer than the swap.
 *
 * Threads. A build (compile, hook checks, policy tests) runs on a builder
 * thread of its own, in two fresh Lua states that nothing else can reach
 * until the loop takes the result from the builder's done list: this is the
 * one place where a lua_State is used off the loop thread, and it never
 * holds one the loop can see. Only the swap runs on the loop, between two
 * callbacks, so no hook call is in flight on the old generation (all hook
 * calls run on the loop). The old generation is closed on the builder too,
 * since closing a Lua state takes far longer than the swap: by the next
 * build, before it loads anything, or by a closing task queued a little
 * after the swap when no build comes. One build runs at a time: requests
 * made during a build share one more build after it.
 *
 * The builder runs at a low CPU priority (SCHED_BATCH, nice 10; see
 * lower_priority), so it seldom takes the CPU from the loop, and it shares
 * no lock with the loop (a lock held by a thread that has lost the CPU
 * would stall the loop). On libuv's pool, at normal priority, 18 swaps in
 * 1,200 paused the loop for over 1 ms on a busy 2-core machine; about 1 in
 * 1,000 with this builder (bench/README.md). Its policy calls measure their
 * deadlines in the builder's CPU time: a machine busy with other work slows
 * a build down, and a wall-clock deadline would then reject a good policy
 * (an infinite loop still uses CPU time, and is still stopped). ffdl_policies_free stops it: it
 * ends its current task, closes what is queued without building it, and exits; the loop joins it
 * and the memory goes in the close callback.
 */
#define _GNU_SOURCE /* SCHED_BATCH */
#include "policy/reload.h"
#include "core/error.h"
#include "core/log.h"
#include "policy/limits.h"
#include "policy/policytest.h"

#include <lauxlib.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Attempts when the files change between the tested and the live load. */
#define MAX_BUILD_ATTEMPTS 3
/* How long replaced generations wait for a build to close them. */
#define REAP_AFTER_MS 1000
/* The builder thread's nice value (see lower_priority). */
#define BUILDER_NICE 10

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

/* One task for the builder thread: close GRAVES, then, unless REAP_ONLY,
 * build a generation. The builder reads OPTS and writes NEXT, RC, ERR and
 * BUILD_NS; the loop reads them once the task is on the done list. */
typedef struct build {
  struct build *link; /* in the builder's to-do list, then its done list */
  ffdl_policies *p;
  int reap_only;
  grave *graves;             /* taken over from P when the task was queued */
  ffdl_generation_opts opts; /* strings borrowed from P, which outlives the task */
  ffdl_generation *next;
  int rc;
  char *err;
  uint64_t trigger_ns; /* the file event or request this build answers */
  uint64_t build_ns;   /* time spent on the builder thread */
  waiter *waiters;     /* answered when it ends */
} build;

struct ffdl_policies {
  uv_loop_t *loop;
  ffdl_generation_opts opts;
  char *policies_dir, *lua_dir;
  ffdl_generation *active;
  ffdl_policies_swap_cb on_swap;
  void *ud;
  /* the directory, its tests/ and the directory above it (for the
   * directory itself swapped: a symlink moved to a new release) */
  uv_fs_event_t watch_dir, watch_tests, watch_parent;
  char *dir_name; /* the last part of policies_dir, as the parent's events name it */
  uv_timer_t debounce;
  unsigned debounce_ms;
  int watching;
  unsigned long reloads, failures;
  long long loaded_ms;
  char *last_error;
  /* builds */
  build *building;     /* the build queued or running, or NULL */
  int again;           /* requests came during it: one more build after it */
  waiter *queued;      /* waiters of that next build */
  uint64_t trigger_ns; /* earliest trigger no build has started for yet; 0: none */
  /* generations to close off the loop */
  grave *graves;
  uv_timer_t reaper; /* when no build takes them (started lazily) */
  int reaper_started;
  /* the builder thread, started by the first task; the loop and it share
   * only the atomics, WAKE and FINISHED */
  uv_thread_t builder;
  uv_sem_t wake;                      /* posted for each task, and for the stop */
  uv_async_t finished;                /* the builder wakes the loop: a task ended, or it exited */
  build *_Atomic todo, *_Atomic done; /* pushed by one side, taken whole by the other */
  atomic_int stop, exited;
  int builder_started, builder_failed;
  unsigned tasks; /* queued or running; FINISHED holds the loop while nonzero */
  /* teardown: memory goes when nothing on the loop refers to it */
  int closing;
  unsigned pending; /* handles closing, the builder until it is joined */
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
      char *save = NULL; /* strtok_r: a reload checks on the builder thread */
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
  free(p->dir_name);
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

/* ---- the builder thread --------------------------------------------------
 * The loop and the builder hand each other tasks through two lists without
 * a lock: a lock held by a builder that has just lost the CPU (it yields to
 * every other thread) would stall the loop. Each list has one pusher; the
 * other side takes the whole list at once, so no node is ever seen twice. */

static void push(build *_Atomic *head, build *b) {
  build *old = atomic_load(head);
  do
    b->link = old;
  while (!atomic_compare_exchange_weak(head, &old, b));
}

/* The whole list, oldest first. */
static build *take_all(build *_Atomic *head) {
  build *list = atomic_exchange(head, NULL), *fifo = NULL;
  while (list) {
    build *next = list->link;
    list->link = fifo;
    fifo = list;
    list = next;
  }
  return fifo;
}

/* The builder runs below the loop's priority: SCHED_BATCH (it never
 * preempts a thread when it wakes) at nice 10, where a nice-0 thread that
 * wants the CPU gets ten times its share. It is not SCHED_IDLE: that
 * gets no CPU at all while other work keeps every core busy (learners on a
 * local-backend server), and a reload then took seconds to minutes; at
 * nice 10 a build of the default policies with four busy loops on two
 * cores takes ~0.1 s (4-5 s at SCHED_IDLE), and the loop's pauses at swaps
 * measured the same (bench/README.md). A thread may lower its own priority
 * without privileges but not raise it back, which is why this is a thread
 * of its own and not libuv's pool (its threads also do the jobs' file
 * work). */
static void lower_priority(void) {
#ifdef __linux__
  struct sched_param param = {0};
  pthread_setschedparam(pthread_self(), SCHED_BATCH, &param);         /* nice alone where refused */
  setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), BUILDER_NICE); /* this thread only */
#endif
}

/* On the builder: once P is stopping, queued tasks only close generations. */
static void run_task(build *b, int stopping) {
  close_graves(b->graves); /* first: fewer Lua states alive at once */
  b->graves = NULL;
  if (b->reap_only || stopping) return;
  uint64_t started = uv_hrtime();
  b->rc = build_generation(&b->opts, &b->next, &b->err);
  b->build_ns = uv_hrtime() - started;
}

static void builder_main(void *arg) {
  ffdl_policies *p = arg;
  lower_priority();
  ffdl_sandbox_deadlines_in_cpu_time(); /* a busy machine delays a build, never fails it */
  for (int stopping = 0; !stopping;) {
    uv_sem_wait(&p->wake);
    stopping = atomic_load(&p->stop);
    for (build *b = take_all(&p->todo), *next; b; b = next) {
      next = b->link;
      run_task(b, stopping);
      push(&p->done, b);
      uv_async_send(&p->finished);
    }
  }
  /* every task is on the done list: the loop joins this thread once it
   * sees EXITED, so P outlives the last send */
  atomic_store(&p->exited, 1);
  uv_async_send(&p->finished);
}

static void on_builder_closed(uv_handle_t *h) {
  ffdl_policies *p = h->data;
  uv_sem_destroy(&p->wake);
  on_handle_closed(h);
}

static void build_done(build *b);

/* On the loop: the builder finished tasks, or exited after a stop. */
static void on_finished(uv_async_t *h) {
  ffdl_policies *p = h->data;
  int exited = atomic_load(&p->exited); /* before the list: nothing pushed after it */
  for (build *b = take_all(&p->done), *next; b; b = next) {
    next = b->link;
    if (--p->tasks == 0 && !p->closing) uv_unref((uv_handle_t *)&p->finished);
    if (b->reap_only)
      free(b);
    else
      build_done(b);
  }
  if (!exited) return;
  uv_thread_join(&p->builder); /* it has only its last send left */
  uv_close((uv_handle_t *)&p->finished, on_builder_closed);
}

static int start_builder(ffdl_policies *p) {
  if (uv_sem_init(&p->wake, 0) != 0) return FFDL_EIO;
  if (uv_async_init(p->loop, &p->finished, on_finished) != 0) {
    uv_sem_destroy(&p->wake);
    return FFDL_EIO;
  }
  p->finished.data = p;
  uv_unref((uv_handle_t *)&p->finished); /* held only while tasks are out */
  if (uv_thread_create(&p->builder, builder_main, p) != 0) {
    p->pending++;
    p->builder_failed = 1;
    uv_close((uv_handle_t *)&p->finished, on_builder_closed);
    return FFDL_EIO;
  }
  p->pending++; /* until the builder is joined and FINISHED closed */
  p->builder_started = 1;
  return FFDL_OK;
}

/* Hands B to the builder; on failure B stays the caller's. */
static int queue_task(ffdl_policies *p, build *b) {
  if (p->builder_failed) return FFDL_EIO;
  if (!p->builder_started && start_builder(p) != FFDL_OK) return FFDL_EIO;
  if (p->tasks++ == 0) uv_ref((uv_handle_t *)&p->finished);
  push(&p->todo, b);
  uv_sem_post(&p->wake);
  return FFDL_OK;
}

void ffdl_policies_free(ffdl_policies *p) {
  if (!p || p->closing) return;
  p->closing = 1;
  waiter *queued = p->queued;
  p->queued = NULL;
  answer(queued, FFDL_EIO, NULL);
  if (p->builder_started) {
    /* the builder ends its task, closes what is queued without building it
     * and exits; the loop then joins it (build_done answers the waiters) */
    atomic_store(&p->stop, 1);
    uv_sem_post(&p->wake);
    uv_ref((uv_handle_t *)&p->finished);
  }
  if (p->watching) {
    p->pending += 4;
    uv_close((uv_handle_t *)&p->watch_dir, on_handle_closed);
    uv_close((uv_handle_t *)&p->watch_tests, on_handle_closed);
    uv_close((uv_handle_t *)&p->watch_parent, on_handle_closed);
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

/* No build came since the swap: the builder closes the old generations. */
static void on_reap(uv_timer_t *t) {
  ffdl_policies *p = t->data;
  if (!p->graves || p->closing) return;
  build *r = calloc(1, sizeof *r);
  if (!r) return; /* the next build or the teardown takes them */
  r->p = p;
  r->reap_only = 1;
  r->graves = p->graves;
  if (queue_task(p, r) != FFDL_OK) {
    free(r);
    return;
  }
  p->graves = NULL;
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

static int start_build(ffdl_policies *p);

/* On the loop: the swap, or the record of a rejection; then the answers. */
static void build_done(build *b) {
  uint64_t entered = uv_hrtime(), entered_cpu = thread_cpu_ns();
  ffdl_policies *p = b->p;
  p->building = NULL;
  if (p->closing) {
    close_graves(b->graves); /* none left: the builder closed them */
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
  b->trigger_ns = p->trigger_ns ? p->trigger_ns : uv_hrtime();
  b->waiters = p->queued;
  b->graves = p->graves;
  if (queue_task(p, b) != FFDL_OK) {
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

static void schedule_reload(ffdl_policies *p) {
  if (!p->trigger_ns) p->trigger_ns = uv_hrtime();
  uv_timer_start(&p->debounce, on_debounced, p->debounce_ms, 0);
}

static void on_change(uv_fs_event_t *h, const char *file, int events, int status);

/* Watches W on PATH from now on (a watch follows an inode: a directory
 * deleted and made again, or a symlink moved, needs a new one). 0 when
 * PATH can be watched. */
static int rearm(uv_fs_event_t *w, const char *path) {
  uv_fs_event_stop(w);
  return uv_fs_event_start(w, on_change, path, 0);
}

static int rearm_tests(ffdl_policies *p) {
  char tests[4096];
  snprintf(tests, sizeof tests, "%s/tests", p->policies_dir);
  return rearm(&p->watch_tests, tests); /* optional: there may be no tests/ */
}

static void on_change(uv_fs_event_t *h, const char *file, int events, int status) {
  (void)events, (void)status;
  ffdl_policies *p = h->data;
  if (p->closing) return;
  if (h == &p->watch_parent) {
    if (!file || strcmp(file, p->dir_name) != 0) return; /* a neighbour of the directory */
    rearm(&p->watch_dir, p->policies_dir);
    rearm_tests(p);
  } else if (h == &p->watch_dir && (!file || strcmp(file, "tests") == 0)) {
    rearm_tests(p); /* tests/ made, deleted or replaced */
  }
  schedule_reload(p);
}

/* "A/B/DIR/" -> "A/B" and "DIR" (both allocated; "." and "/" for a
 * directory with no parent part). */
static int split_dir(const char *dir, char **parent, char **name) {
  size_t len = strlen(dir);
  while (len > 1 && dir[len - 1] == '/')
    len--;
  size_t cut = len;
  while (cut > 0 && dir[cut - 1] != '/')
    cut--;
  *parent = cut == 0 ? strdup(".") : cut == 1 ? strdup("/") : strndup(dir, cut - 1);
  *name = strndup(dir + cut, len - cut);
  return *parent && *name ? FFDL_OK : FFDL_ENOMEM;
}

int ffdl_policies_watch(ffdl_policies *p, unsigned debounce_ms) {
  p->debounce_ms = debounce_ms;
  char *parent = NULL;
  if (split_dir(p->policies_dir, &parent, &p->dir_name) != FFDL_OK) {
    free(parent);
    return FFDL_ENOMEM;
  }
  uv_timer_init(p->loop, &p->debounce);
  uv_fs_event_t *watches[] = {&p->watch_dir, &p->watch_tests, &p->watch_parent};
  for (size_t i = 0; i < 3; i++) {
    uv_fs_event_init(p->loop, watches[i]);
    watches[i]->data = p;
    uv_unref((uv_handle_t *)watches[i]);
  }
  p->debounce.data = p;
  uv_unref((uv_handle_t *)&p->debounce);
  p->watching = 1;
  int rc = rearm(&p->watch_dir, p->policies_dir);
  rearm_tests(p);
  rearm(&p->watch_parent, parent); /* optional: the parent may not be readable */
  free(parent);
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
