/*
 * sandbox.c: the Lua state that runs untrusted policy and spec code.
 * Owns: the capped allocator, the deadline of each hook and the watchdog
 * thread that enforces it, the base environment and ffdl_policy_call(),
 * the single way into Lua, and its latency histogram. Must not: block,
 * open io/os/package/debug, or let a Lua error unwind past
 * ffdl_policy_call().
 * One sandbox is used by one thread at a time; what is process-wide (the
 * histogram, limit events, the watchdog's list of threads) is behind a
 * mutex. The watchdog signals a thread (SIGRTMIN+2) only while a call on
 * it is past its deadline.
 */
#include "policy/sandbox.h"
#include "core/error.h"
#include "core/log.h"
#include "policy/limits.h"
#include "policy/luaapi.h"
#include "policy/luapool.h"

#include <lauxlib.h>
#include <lualib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_MEMORY_LIMIT ((size_t)64 << 20)
#define DEFAULT_DEADLINE_MS 1000.0
#define DEFAULT_PLACE_DEADLINE_MS 50.0
#define HOOK_EVERY 1000      /* instructions between deadline checks in a coroutine */
#define WATCH_TICK_MS 5      /* how often the watchdog looks at running calls */
#define WATCH_PARK_TICKS 200 /* idle ticks before it sleeps until a call comes */

struct ffdl_sandbox {
  lua_State *L;
  ffdl_luapool *pool; /* the state's small objects */
  size_t used;
  size_t limit;
  size_t refused;            /* the size the last refused growth asked for */
  size_t used_after_collect; /* what the last forced collection left */
  double default_deadline_ms;
  double hook_deadline_ms[FFDL_HOOK_COUNT]; /* resolved: never 0 */
  double deadline_ms;                       /* the current call's limit, for messages */
  uint64_t deadline_ns;                     /* 0 when no call is running */
  int expired;                              /* the deadline passed during this call */
  int out_of_memory;                        /* the allocator refused during this call */
  char label[65];                           /* the generation's hash, for limit events */
};

static const char *const hook_names[FFDL_HOOK_COUNT] = {"validate", "admit", "order",     "rank",
                                                        "place",    "hold",  "on_failure"};

int ffdl_hook_from_name(const char *name) {
  if (!name) return -1;
  for (int h = 0; h < FFDL_HOOK_COUNT; h++)
    if (strcmp(name, hook_names[h]) == 0) return h;
  return strcmp(name, "retry") == 0 ? FFDL_HOOK_ON_FAILURE : -1;
}

const char *ffdl_hook_name(int hook) {
  return hook >= 0 && hook < FFDL_HOOK_COUNT ? hook_names[hook] : "other";
}

/* Process defaults for the zero fields of a sandbox's limits; set at
 * start-up, read when sandboxes are created. */
static ffdl_sandbox_limits process_defaults;

void ffdl_sandbox_set_defaults(const ffdl_sandbox_limits *limits) {
  if (limits)
    process_defaults = *limits;
  else
    memset(&process_defaults, 0, sizeof process_defaults);
}

/* Fills SB's limits: LIMITS, else the process defaults, else built-ins. */
static void resolve_limits(ffdl_sandbox *sb, const ffdl_sandbox_limits *limits) {
  const ffdl_sandbox_limits none = {0}, *l = limits ? limits : &none, *d = &process_defaults;
  sb->limit = l->memory_limit   ? l->memory_limit
              : d->memory_limit ? d->memory_limit
                                : DEFAULT_MEMORY_LIMIT;
  sb->default_deadline_ms = l->deadline_ms > 0   ? l->deadline_ms
                            : d->deadline_ms > 0 ? d->deadline_ms
                                                 : DEFAULT_DEADLINE_MS;
  for (int h = 0; h < FFDL_HOOK_COUNT; h++)
    sb->hook_deadline_ms[h] = l->hook_deadline_ms[h] > 0   ? l->hook_deadline_ms[h]
                              : d->hook_deadline_ms[h] > 0 ? d->hook_deadline_ms[h]
                              : h == FFDL_HOOK_PLACE       ? DEFAULT_PLACE_DEADLINE_MS
                                                           : sb->default_deadline_ms;
}

/* The base environment's registry key: the address of this static. */
static const char BASE_ENV_KEY = 'b';

static uint64_t clock_ns(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void) {
  return clock_ns(CLOCK_MONOTONIC);
}

/* The clock this thread's calls measure their deadlines on (see
 * ffdl_sandbox_deadlines_in_cpu_time). */
static __thread clockid_t deadline_clock = CLOCK_MONOTONIC;

static uint64_t deadline_now(void) {
  return clock_ns(deadline_clock);
}

static ffdl_sandbox *sandbox_of(lua_State *L) {
  return *(ffdl_sandbox **)lua_getextraspace(L);
}

static void deadline_hook(lua_State *L, lua_Debug *ar);

/* The allocator: refuses any growth past the cap while a policy call
 * runs. Between calls only the runtime allocates (the arguments of the
 * next call, a few kilobytes), outside any protected call: a refusal there
 * would end the process, so a policy that kept memory up to its cap makes
 * its own next call fail, not the server. */
static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  ffdl_sandbox *sb = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    ffdl_luapool_realloc(sb->pool, ptr, osize, 0);
    sb->used -= old;
    return NULL;
  }
  if (nsize > old && sb->deadline_ns && sb->used - old + nsize > sb->limit) {
    sb->out_of_memory = 1;
    sb->refused = sb->used - old + nsize;
    return NULL;
  }
  void *grown = ffdl_luapool_realloc(sb->pool, ptr, old, nsize);
  if (!grown) {
    sb->out_of_memory = 1;
    sb->refused = sb->used - old + nsize;
    return NULL;
  }
  sb->used = sb->used - old + nsize;
  return grown;
}

/*
 * Deadlines. A count hook makes Lua's VM call into the debug layer before
 * every instruction (whatever the count), which cost about 8% of the
 * scheduling cycle. So the sandbox's main thread runs without a hook, and
 * a watchdog thread looks at the running calls every WATCH_TICK_MS: once a
 * call's deadline has passed, it signals that call's thread, whose
 * handler installs the hook (lua_sethook may be called from a signal
 * handler, as lua.c does for Ctrl-C); the hook then raises. It keeps
 * signalling until the call ends. Coroutines keep a count hook from birth
 * (see spawn_with_hook): a signal reaches only the main thread, and a
 * loop inside a coroutine must still stop.
 */
typedef struct watched {
  pthread_t thread;
  _Atomic clockid_t clock;      /* its deadline_clock */
  _Atomic uint64_t deadline_ns; /* of the call running on it, on CLOCK; 0: none */
  struct watched *next;
} watched;

static pthread_mutex_t watch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_wake = PTHREAD_COND_INITIALIZER;
static pthread_once_t watch_once = PTHREAD_ONCE_INIT;
static pthread_key_t watch_key; /* unregisters a thread when it exits */
static watched *watch_list;
static atomic_int watch_parked;
static atomic_int calls_running;
static int deadline_signal;
static __thread watched *this_thread;
static __thread ffdl_sandbox *running_here; /* the innermost call's sandbox */

static void on_deadline_signal(int sig) {
  (void)sig;
  ffdl_sandbox *sb = running_here;
  if (sb) lua_sethook(sb->L, deadline_hook, LUA_MASKCOUNT, 1);
}

static void signal_overdue_calls(void) {
  for (watched *w = watch_list; w; w = w->next) {
    uint64_t deadline = atomic_load(&w->deadline_ns);
    if (deadline && clock_ns(atomic_load(&w->clock)) >= deadline)
      pthread_kill(w->thread, deadline_signal);
  }
}

static void *watchdog_main(void *arg) {
  (void)arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are for the other threads */
  int idle = 0;
  for (;;) {
    pthread_mutex_lock(&watch_lock);
    idle = atomic_load(&calls_running) ? 0 : idle + 1;
    if (idle >= WATCH_PARK_TICKS) {
      atomic_store(&watch_parked, 1);
      while (atomic_load(&watch_parked))
        pthread_cond_wait(&watch_wake, &watch_lock);
      idle = 0;
    }
    signal_overdue_calls();
    pthread_mutex_unlock(&watch_lock);
    struct timespec tick = {0, WATCH_TICK_MS * 1000000L};
    nanosleep(&tick, NULL);
  }
  return NULL;
}

static void unwatch_thread(void *w) {
  pthread_mutex_lock(&watch_lock);
  for (watched **p = &watch_list; *p; p = &(*p)->next)
    if (*p == w) {
      *p = ((watched *)w)->next;
      break;
    }
  pthread_mutex_unlock(&watch_lock);
  free(w);
}

static void start_watchdog(void) {
  deadline_signal = SIGRTMIN + 2;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_deadline_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  pthread_t thread;
  if (pthread_key_create(&watch_key, unwatch_thread) != 0 ||
      sigaction(deadline_signal, &sa, NULL) != 0 ||
      pthread_create(&thread, NULL, watchdog_main, NULL) != 0) {
    ffdl_log(FFDL_LOG_ERROR, "sandbox: no deadline watchdog; policy deadlines are not enforced");
    deadline_signal = 0;
    return;
  }
  pthread_detach(thread);
}

/* The calling thread's entry in the watch list; NULL without a watchdog. */
static watched *watch_this_thread(void) {
  if (this_thread) return this_thread;
  pthread_once(&watch_once, start_watchdog);
  watched *w = calloc(1, sizeof *w);
  if (!deadline_signal || !w) {
    free(w);
    return NULL;
  }
  w->thread = pthread_self();
  atomic_store(&w->clock, deadline_clock);
  sigset_t deadline_only;
  sigemptyset(&deadline_only);
  sigaddset(&deadline_only, deadline_signal);
  pthread_sigmask(SIG_UNBLOCK, &deadline_only, NULL); /* libuv's threads may block it */
  pthread_mutex_lock(&watch_lock);
  w->next = watch_list;
  watch_list = w;
  pthread_mutex_unlock(&watch_lock);
  pthread_setspecific(watch_key, w);
  return this_thread = w;
}

void ffdl_sandbox_deadlines_in_cpu_time(void) {
  clockid_t cpu;
  if (pthread_getcpuclockid(pthread_self(), &cpu) != 0) return; /* wall time, then */
  deadline_clock = cpu;
  if (this_thread) atomic_store(&this_thread->clock, cpu);
}

/* A call with DEADLINE starts on this thread: the watchdog looks at the
 * earliest deadline of the calls running on it (calls nest, and an inner
 * one may have less time). Returns what to give unwatch_call. */
static uint64_t watch_call(uint64_t deadline) {
  watched *w = watch_this_thread();
  if (!w) return 0;
  uint64_t before = atomic_load(&w->deadline_ns);
  if (before && before < deadline) return before;
  if (!before) atomic_fetch_add(&calls_running, 1);
  atomic_store(&w->deadline_ns, deadline);
  if (atomic_load(&watch_parked)) {
    pthread_mutex_lock(&watch_lock);
    atomic_store(&watch_parked, 0);
    pthread_cond_signal(&watch_wake);
    pthread_mutex_unlock(&watch_lock);
  }
  return before;
}

/* The call is over: the thread's deadline is BEFORE's again. */
static void unwatch_call(uint64_t before) {
  if (!this_thread) return;
  atomic_store(&this_thread->deadline_ns, before);
  if (!before) atomic_fetch_sub(&calls_running, 1);
}

/* Raises once the call's deadline has passed, and on every instruction
 * after that, so that a policy's pcall cannot swallow it. Installed on the
 * main thread by the watchdog's signal (a late one finds the deadline not
 * passed and takes the hook off again), and on coroutines from birth. */
static void deadline_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  ffdl_sandbox *sb = sandbox_of(L);
  int main_thread = L == sb->L;
  if (sb->deadline_ns == 0 || (!sb->expired && deadline_now() < sb->deadline_ns)) {
    if (main_thread) lua_sethook(L, NULL, 0, 0);
    return;
  }
  if (!sb->expired) {
    sb->expired = 1;
    lua_sethook(L, deadline_hook, LUA_MASKCOUNT, 1);
  }
  /* name the line that was running: level 0 is the function being run */
  lua_Debug here;
  if (lua_getstack(L, 0, &here) && lua_getinfo(L, "Sl", &here) && here.currentline > 0)
    lua_pushfstring(L, "%s:%d: ", here.short_src, here.currentline);
  else
    lua_pushliteral(L, "");
  lua_pushfstring(L, "deadline of %d ms exceeded (infinite loop?)", (int)sb->deadline_ms);
  lua_concat(L, 2);
  lua_error(L);
}

/* A limit hit inside a protected call is re-raised: limits are final. */
static int limit_hit(lua_State *L) {
  ffdl_sandbox *sb = sandbox_of(L);
  return sb->expired || sb->out_of_memory;
}

static int l_pcall(lua_State *L) {
  luaL_checkany(L, 1);
  int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
  if (status != LUA_OK && limit_hit(L)) return lua_error(L);
  lua_pushboolean(L, status == LUA_OK);
  lua_insert(L, 1);
  return lua_gettop(L);
}

static int l_xpcall(lua_State *L) {
  int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushvalue(L, 1); /* [f, h, args..., f] */
  lua_copy(L, 2, 1);   /* [h, h, args..., f] */
  lua_replace(L, 2);   /* [h, f, args...] */
  int status = lua_pcall(L, n - 2, LUA_MULTRET, 1);
  if (status != LUA_OK && limit_hit(L)) return lua_error(L);
  lua_pushboolean(L, status == LUA_OK);
  lua_replace(L, 1);
  return lua_gettop(L);
}

/* setmetatable without finalizers: a __gc function runs whenever the
 * collector gets to it, which may be between policy calls, where no
 * deadline would stop it. */
static int l_setmetatable(lua_State *L) {
  if (lua_istable(L, 2)) {
    lua_pushliteral(L, "__gc");
    int has_gc = lua_rawget(L, 2) != LUA_TNIL;
    lua_pop(L, 1);
    if (has_gc) return luaL_error(L, "setmetatable(): __gc is not allowed in the sandbox");
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

/* Only "count" is allowed: stopping or tuning the collector is not. */
static int l_collectgarbage(lua_State *L) {
  const char *opt = luaL_optstring(L, 1, "count");
  if (strcmp(opt, "count") != 0)
    return luaL_error(L, "collectgarbage(\"%s\") is not allowed in the sandbox", opt);
  lua_pushnumber(L, (lua_Number)sandbox_of(L)->used / 1024.0);
  return 1;
}

static int l_print(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int n = lua_gettop(L);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  ffdl_log(FFDL_LOG_INFO, "lua: %s", lua_tostring(L, -1));
  return 0;
}

static const luaL_Reg safe_overrides[] = {{"pcall", l_pcall},
                                          {"xpcall", l_xpcall},
                                          {"collectgarbage", l_collectgarbage},
                                          {"print", l_print},
                                          {NULL, NULL}};

/* Names copied from the real globals into the base environment. */
static const char *const safe_globals[] = {
    "assert", "error",    "ipairs", "next",         "pairs",        "rawequal", "rawget",
    "rawlen", "rawset",   "select", "setmetatable", "getmetatable", "tonumber", "tostring",
    "type",   "_VERSION", NULL};
static const char *const safe_libs[] = {"string", "table", "math", "utf8", "coroutine", NULL};

/* Wraps the table at the top in a read-only proxy.  [-1, +1, m] */
static const char FREEZE_LUA[] =
    "local t = ...\n"
    "local function deny(_, k) error('attempt to modify read-only table (key ' .. tostring(k) .. "
    "')', 2) end\n"
    "return setmetatable({}, {__index = t, __newindex = deny, __metatable = 'locked',\n"
    "  __pairs = function() return next, t, nil end, __len = function() return #t end})\n";

static void freeze_top(lua_State *L) {
  if (luaL_loadbufferx(L, FREEZE_LUA, sizeof FREEZE_LUA - 1, "=freeze", "t") != LUA_OK)
    lua_error(L);
  lua_insert(L, -2);
  lua_call(L, 1, 1);
}

/* coroutine.create and coroutine.wrap (the original is upvalue 1): a new
 * thread takes its creator's hook, so the creator has the count hook on
 * while the original runs, then gets its own back. */
static int spawn_with_hook(lua_State *L) {
  lua_Hook hook = lua_gethook(L);
  int mask = lua_gethookmask(L), count = lua_gethookcount(L);
  lua_sethook(L, deadline_hook, LUA_MASKCOUNT, HOOK_EVERY);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  lua_sethook(L, hook, mask, count);
  return lua_gettop(L);
}

static void hook_spawner(lua_State *L, const char *name) {
  lua_getfield(L, -1, name);
  lua_pushcclosure(L, spawn_with_hook, 1);
  lua_setfield(L, -2, name);
}

/* Builds the base environment in the registry; runs unprotected inside
 * lua_pcall from ffdl_sandbox_new.  [-0, +0, m] */
static int build_base_env(lua_State *L) {
  lua_newtable(L); /* base */
  for (const char *const *name = safe_globals; *name; name++) {
    lua_getglobal(L, *name);
    lua_setfield(L, -2, *name);
  }
  for (const char *const *lib = safe_libs; *lib; lib++) {
    lua_getglobal(L, *lib);
    lua_newtable(L); /* a copy, so the real library is never reachable */
    lua_pushnil(L);
    while (lua_next(L, -3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_settable(L, -4);
    }
    lua_remove(L, -2);
    if (strcmp(*lib, "string") == 0) {
      lua_pushnil(L);
      lua_setfield(L, -2, "dump");
    }
    if (strcmp(*lib, "coroutine") == 0) {
      hook_spawner(L, "create");
      hook_spawner(L, "wrap");
    }
    freeze_top(L);
    lua_setfield(L, -2, *lib);
  }
  luaL_setfuncs(L, safe_overrides, 0);
  lua_getfield(L, -1, "setmetatable");
  lua_pushcclosure(L, l_setmetatable, 1);
  lua_setfield(L, -2, "setmetatable");
  ffdl_luaapi_push(L);
  freeze_top(L);
  lua_setfield(L, -2, "ffdl");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &BASE_ENV_KEY);

  /* string methods reach the real string table through its metatable:
   * drop dump there too and hide the metatable itself. */
  lua_getglobal(L, "string");
  lua_pushnil(L);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  lua_pushliteral(L, "locked");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 2);
  return 0;
}

static void open_safe_libs(lua_State *L) {
  static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                  {LUA_STRLIBNAME, luaopen_string},
                                  {LUA_TABLIBNAME, luaopen_table},
                                  {LUA_MATHLIBNAME, luaopen_math},
                                  {LUA_UTF8LIBNAME, luaopen_utf8},
                                  {LUA_COLIBNAME, luaopen_coroutine},
                                  {NULL, NULL}};
  for (const luaL_Reg *lib = libs; lib->func; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }
}

static int open_all(lua_State *L) {
  open_safe_libs(L);
  return build_base_env(L);
}

int ffdl_sandbox_new(const ffdl_sandbox_limits *limits, ffdl_sandbox **out) {
  *out = NULL;
  ffdl_sandbox *sb = calloc(1, sizeof *sb);
  if (!sb) return FFDL_ENOMEM;
  resolve_limits(sb, limits);
  sb->pool = ffdl_luapool_new();
  sb->L = sb->pool ? lua_newstate(capped_alloc, sb) : NULL;
  if (!sb->L) {
    ffdl_luapool_free(sb->pool);
    free(sb);
    return FFDL_ENOMEM;
  }
  *(ffdl_sandbox **)lua_getextraspace(sb->L) = sb;
  lua_pushcfunction(sb->L, open_all);
  if (lua_pcall(sb->L, 0, 0, 0) != LUA_OK) {
    ffdl_log(FFDL_LOG_ERROR, "sandbox: cannot build the environment: %s", lua_tostring(sb->L, -1));
    ffdl_sandbox_free(sb);
    return FFDL_ENOMEM;
  }
  *out = sb;
  return FFDL_OK;
}

void ffdl_sandbox_free(ffdl_sandbox *sb) {
  if (!sb) return;
  if (sb->L) lua_close(sb->L);
  ffdl_luapool_free(sb->pool);
  free(sb);
}

lua_State *ffdl_sandbox_state(ffdl_sandbox *sb) {
  return sb->L;
}

size_t ffdl_sandbox_memory_used(const ffdl_sandbox *sb) {
  return sb->used;
}

size_t ffdl_sandbox_memory_limit(const ffdl_sandbox *sb) {
  return sb->limit;
}

double ffdl_sandbox_default_deadline(const ffdl_sandbox *sb) {
  return sb->default_deadline_ms;
}

double ffdl_sandbox_deadline_for(const ffdl_sandbox *sb, const char *what) {
  int hook = ffdl_hook_from_name(what);
  return hook >= 0 ? sb->hook_deadline_ms[hook] : sb->default_deadline_ms;
}

void ffdl_sandbox_set_label(ffdl_sandbox *sb, const char *label) {
  snprintf(sb->label, sizeof sb->label, "%s", label ? label : "");
}

void ffdl_sandbox_push_env(lua_State *L) {
  lua_newtable(L);
  lua_newtable(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &BASE_ENV_KEY);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
}

/* "64 MiB", or "1.5 MiB" for a cap that is not a whole number of MiB. */
static const char *mib(size_t bytes, char *buf, size_t cap) {
  if (bytes % (1u << 20) == 0)
    snprintf(buf, cap, "%zu MiB", bytes >> 20);
  else
    snprintf(buf, cap, "%.2f MiB", (double)bytes / 1048576.0);
  return buf;
}

int ffdl_sandbox_load(ffdl_sandbox *sb, const char *name, const char *text, size_t len,
                      char **err) {
  lua_State *L = sb->L;
  *err = NULL;
  sb->out_of_memory = 0;
  int status = luaL_loadbufferx(L, text, len, name, "t");
  if (status != LUA_OK) {
    if (status == LUA_ERRMEM) {
      char buf[600], cap[32];
      snprintf(buf, sizeof buf, "%s: memory limit of %s exceeded while compiling",
               name[0] == '@' || name[0] == '=' ? name + 1 : name, mib(sb->limit, cap, sizeof cap));
      *err = strdup(buf);
    } else {
      *err = strdup(lua_tostring(L, -1));
    }
    lua_pop(L, 2); /* message and env */
    return FFDL_ESYNTAX;
  }
  lua_insert(L, -2);
  if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
  return FFDL_OK;
}

/* Message handler: keeps the message, logs the traceback. */
static int traceback_handler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  ffdl_log(FFDL_LOG_WARN, "%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_pushstring(L, msg);
  return 1;
}

static char *describe_failure(ffdl_sandbox *sb, int status, int *code) {
  lua_State *L = sb->L;
  char buf[640];
  if (status == LUA_ERRMEM || sb->out_of_memory) {
    *code = FFDL_ELIMIT;
    const char *where = status == LUA_ERRMEM ? "" : lua_tostring(L, -1);
    char cap[32];
    snprintf(buf, sizeof buf, "memory limit of %s exceeded%s%s", mib(sb->limit, cap, sizeof cap),
             where && *where ? ": " : "", where ? where : "");
    return strdup(buf);
  }
  *code = sb->expired ? FFDL_ETIMEOUT : FFDL_ELUA;
  const char *msg = lua_tostring(L, -1);
  return strdup(msg ? msg : "error without a message");
}

const double FFDL_LATENCY_BOUNDS[FFDL_LATENCY_BUCKET_COUNT] = {0.0001, 0.0005, 0.001, 0.005,
                                                               0.01,   0.05,   0.1,   1};
/* Calls run on the loop and, for generations being built, on the thread
 * pool: the histogram is shared, so it is read and written under a lock. */
static ffdl_latency policy_latency;
static pthread_mutex_t policy_latency_lock = PTHREAD_MUTEX_INITIALIZER;

void ffdl_latency_observe(ffdl_latency *h, double seconds) {
  for (int b = 0; b < FFDL_LATENCY_BUCKET_COUNT; b++)
    if (seconds <= FFDL_LATENCY_BOUNDS[b]) h->buckets[b]++;
  h->count++;
  h->sum += seconds;
}

void ffdl_policy_call_latency(ffdl_latency *out) {
  pthread_mutex_lock(&policy_latency_lock);
  *out = policy_latency;
  pthread_mutex_unlock(&policy_latency_lock);
}

/* The limit event of a call that failed with FFDL_ETIMEOUT or FFDL_ELIMIT. */
static void report_limit(ffdl_sandbox *sb, const char *what, int code, double elapsed_ms,
                         const char *err) {
  if (code == FFDL_ETIMEOUT)
    ffdl_policy_limit_event(what, sb->label, FFDL_LIMIT_DEADLINE, sb->deadline_ms, elapsed_ms, err);
  else if (code == FFDL_ELIMIT)
    ffdl_policy_limit_event(what, sb->label, FFDL_LIMIT_MEMORY, (double)sb->limit,
                            (double)sb->refused, err);
}

int ffdl_policy_call(ffdl_sandbox *sb, const char *what, int nargs, int nres, double deadline_ms,
                     char **err) {
  lua_State *L = sb->L;
  uint64_t started = now_ns();
  uint64_t started_on_clock = deadline_clock == CLOCK_MONOTONIC ? started : deadline_now();
  *err = NULL;
  /* Calls may nest (a C function called from Lua calling back in): keep the
   * outer call's limits and restore them afterwards. */
  uint64_t outer_deadline = sb->deadline_ns;
  double outer_ms = sb->deadline_ms;
  int outer_expired = sb->expired, outer_oom = sb->out_of_memory;

  if (deadline_ms <= 0) deadline_ms = ffdl_sandbox_deadline_for(sb, what);
  uint64_t deadline = started_on_clock + (uint64_t)(deadline_ms * 1e6);
  int outer_owns_deadline = outer_deadline && outer_deadline <= deadline;
  if (outer_owns_deadline) {
    deadline = outer_deadline;
    deadline_ms = outer_ms;
  }
  sb->deadline_ns = deadline;
  sb->deadline_ms = deadline_ms;
  sb->expired = 0;
  sb->out_of_memory = 0;
  ffdl_sandbox *outer_running = running_here;
  uint64_t watched_before = watch_call(deadline);
  running_here = sb;

  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback_handler);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nres, base);
  int code = FFDL_OK;
  if (status != LUA_OK) {
    *err = describe_failure(sb, status, &code);
    lua_pop(L, 1);
    ffdl_log(FFDL_LOG_DEBUG, "policy call %s failed: %s", what, *err);
  }
  lua_remove(L, base);
  running_here = outer_running;
  unwatch_call(watched_before);
  lua_sethook(L, NULL, 0, 0); /* a call that ran out of time left it on */
  uint64_t took = now_ns() - started;
  /* A nested call (C called from Lua calling back in) that ran into the
   * enclosing call's deadline leaves it expired for the enclosing call,
   * which reports it; any other limit is reported by the call that hit it. */
  if (outer_deadline && code == FFDL_ETIMEOUT && outer_owns_deadline)
    outer_expired = 1;
  else if (code == FFDL_ETIMEOUT || code == FFDL_ELIMIT)
    report_limit(sb, what, code, (double)took / 1e6, *err);
  /* what a call that hit the memory cap left behind is garbage now: free
   * it at once rather than when later calls happen to allocate enough;
   * unless the last such collection left about as much (a policy that
   * keeps its memory: every call of it fails, and each full collection of
   * a full heap would take tens of milliseconds) */
  if (code == FFDL_ELIMIT && !outer_deadline && sb->used > sb->used_after_collect + sb->limit / 8) {
    lua_gc(L, LUA_GCCOLLECT, 0);
    sb->used_after_collect = sb->used;
  }
  sb->deadline_ns = outer_deadline;
  sb->deadline_ms = outer_ms;
  sb->expired = outer_expired;
  sb->out_of_memory = outer_oom;
  pthread_mutex_lock(&policy_latency_lock);
  ffdl_latency_observe(&policy_latency, (double)took / 1e9);
  pthread_mutex_unlock(&policy_latency_lock);
  return code;
}
