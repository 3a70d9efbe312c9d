/* Sandbox escapes and limits: each must fail cleanly, and the state must
 * keep working afterwards. */
#include "core/error.h"
#include "policy/luapool.h"
#include "policy/sandbox.h"
#include "runner.h"

#include <lauxlib.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>

static ffdl_sandbox *new_sandbox(size_t memory, double deadline_ms) {
  ffdl_sandbox_limits limits = {.memory_limit = memory, .deadline_ms = deadline_ms};
  ffdl_sandbox *sb;
  CHECK(ffdl_sandbox_new(&limits, &sb) == FFDL_OK);
  return sb;
}

/* Runs CODE as a chunk; returns the ffdl code, *err (caller frees). */
static int run(ffdl_sandbox *sb, const char *code, char **err) {
  lua_State *L = ffdl_sandbox_state(sb);
  ffdl_sandbox_push_env(L);
  int rc = ffdl_sandbox_load(sb, "@test.lua", code, strlen(code), err);
  if (rc != FFDL_OK) return rc;
  rc = ffdl_policy_call(sb, "test", 0, 1, 0, err);
  if (rc == FFDL_OK) lua_pop(L, 1);
  return rc;
}

/* DEADLINE_MS bounds the call; what the case checks comes first. */
static void expect_error_within(size_t memory, double deadline_ms, const char *code, int want_rc,
                                const char *want_msg) {
  ffdl_sandbox *sb = new_sandbox(memory, deadline_ms);
  char *err = NULL;
  int rc = run(sb, code, &err);
  if (rc != want_rc) fprintf(stderr, "rc %s for: %s (%s)\n", ffdl_err_name(rc), code, err);
  CHECK(rc == want_rc);
  CHECK_CONTAINS(err, want_msg);
  free(err);
  /* the state survives and still answers */
  lua_State *L = ffdl_sandbox_state(sb);
  int top = lua_gettop(L);
  ffdl_sandbox_push_env(L);
  CHECK(ffdl_sandbox_load(sb, "@ok.lua", "return 40 + 2", 13, &err) == FFDL_OK);
  CHECK(ffdl_policy_call(sb, "ok", 0, 1, 0, &err) == FFDL_OK);
  CHECK(lua_tointeger(L, -1) == 42);
  lua_pop(L, 1);
  CHECK(lua_gettop(L) == top);
  ffdl_sandbox_free(sb);
}

static void expect_error_with(size_t memory, const char *code, int want_rc, const char *want_msg) {
  expect_error_within(memory, 200, code, want_rc, want_msg);
}

static void expect_error(const char *code, int want_rc, const char *want_msg) {
  expect_error_with(8u << 20, code, want_rc, want_msg);
}

static void os_execute(void) {
  expect_error("return os.execute('id')", FFDL_ELUA,
               "test.lua:1: attempt to index a nil value (global 'os')");
}
static void io_open(void) {
  expect_error("return io.open('/etc/passwd')", FFDL_ELUA, "global 'io'");
}
static void require_module(void) {
  expect_error("return require('os')", FFDL_ELUA, "global 'require'");
}
static void load_string(void) {
  expect_error("return load('return 1')()", FFDL_ELUA, "global 'load'");
}
static void dofile_call(void) {
  expect_error("return dofile('/etc/passwd')", FFDL_ELUA, "global 'dofile'");
}
static void loadstring_via_package(void) {
  expect_error("return package.loadlib('libc.so.6', 'system')", FFDL_ELUA, "global 'package'");
}
static void debug_library(void) {
  expect_error("return debug.getregistry()", FFDL_ELUA, "global 'debug'");
}
static void string_dump(void) {
  expect_error("return string.dump(function() end)", FFDL_ELUA, "field 'dump'");
}
static void string_dump_via_method(void) {
  expect_error("local s = 'x'; return s.dump(print)", FFDL_ELUA, "field 'dump'");
}
static void string_metatable_hidden(void) {
  expect_error("assert(getmetatable('') == 'locked') return rawget(getmetatable(''), 'x')",
               FFDL_ELUA, "bad argument #1 to 'rawget' (table expected, got string)");
}
static void modify_shared_library(void) {
  expect_error("string.upper = nil", FFDL_ELUA, "read-only");
}
static void collectgarbage_stop(void) {
  expect_error("collectgarbage('stop')", FFDL_ELUA, "not allowed in the sandbox");
}
static void collectgarbage_count_allowed(void) {
  ffdl_sandbox *sb = new_sandbox(0, 0);
  char *err = NULL;
  CHECK(run(sb, "assert(collectgarbage('count') > 0)", &err) == FFDL_OK);
  ffdl_sandbox_free(sb);
}
static void bytecode_refused(void) {
  ffdl_sandbox *sb = new_sandbox(0, 0);
  char *err = NULL;
  static const char chunk[] = "\x1bLua\x54\x00garbage";
  ffdl_sandbox_push_env(ffdl_sandbox_state(sb));
  CHECK(ffdl_sandbox_load(sb, "@bin.lua", chunk, sizeof chunk - 1, &err) == FFDL_ESYNTAX);
  CHECK_CONTAINS(err, "binary chunk");
  free(err);
  ffdl_sandbox_free(sb);
}
static void infinite_loop(void) {
  expect_error("while true do end", FFDL_ETIMEOUT, "test.lua:1: deadline of 200 ms exceeded");
}
static void infinite_loop_inside_pcall(void) {
  expect_error("while true do pcall(function() while true do end end) end", FFDL_ETIMEOUT,
               "deadline of 200 ms exceeded");
}
static void infinite_loop_in_coroutine(void) {
  expect_error("local co = coroutine.wrap(function() while true do end end) co()", FFDL_ETIMEOUT,
               "deadline");
}
static void infinite_loop_in_created_coroutine(void) {
  /* created with coroutine.create, inside another coroutine, resumed under pcall */
  expect_error("local outer = coroutine.create(function()\n"
               "  local inner = coroutine.create(function() while true do end end)\n"
               "  assert(coroutine.resume(inner))\n"
               "end)\n"
               "local ok, err = coroutine.resume(outer) error(err, 0)",
               FFDL_ETIMEOUT, "deadline of 200 ms exceeded");
}

/* A thread that blocks every signal before its first call (as some pool
 * threads do) still has its calls stopped at their deadline. */
static void *loop_on_this_thread(void *arg) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  ffdl_sandbox *sb = new_sandbox(8u << 20, 100);
  char *err = NULL;
  *(int *)arg = run(sb, "while true do end", &err);
  free(err);
  *(int *)arg = *(int *)arg == FFDL_ETIMEOUT && run(sb, "return 1", &err) == FFDL_OK;
  ffdl_sandbox_free(sb);
  return NULL;
}

static void infinite_loop_on_another_thread(void) {
  int ok = 0;
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, loop_on_this_thread, &ok) == 0);
  CHECK(pthread_join(thread, NULL) == 0);
  CHECK(ok);
}

/* On a thread whose deadlines count CPU time (the reload builder), time
 * the thread spends off the CPU does not count: a call that sleeps past
 * its deadline in wall time passes; a loop still stops. */
static int sleep_200_ms(lua_State *L) {
  struct timespec pause = {0, 200 * 1000000L};
  nanosleep(&pause, NULL);
  (void)L;
  return 0;
}

static void *sleep_then_loop_on_cpu_time(void *arg) {
  ffdl_sandbox_deadlines_in_cpu_time();
  ffdl_sandbox *sb = new_sandbox(8u << 20, 100);
  lua_State *L = ffdl_sandbox_state(sb);
  char *err = NULL;
  CHECK(luaL_loadstring(L, "local nap = ... nap() return 'woke'") == LUA_OK);
  lua_pushcfunction(L, sleep_200_ms);
  int slept = ffdl_policy_call(sb, "test", 1, 1, 0, &err) == FFDL_OK;
  if (slept) lua_pop(L, 1);
  free(err);
  err = NULL;
  int stopped = run(sb, "while true do end", &err) == FFDL_ETIMEOUT;
  free(err);
  *(int *)arg = slept && stopped;
  ffdl_sandbox_free(sb);
  return NULL;
}

static void cpu_time_deadlines_ignore_time_off_the_cpu(void) {
  int ok = 0;
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, sleep_then_loop_on_cpu_time, &ok) == 0);
  CHECK(pthread_join(thread, NULL) == 0);
  CHECK(ok);
  /* this thread still measures wall time: the same nap runs out */
  ffdl_sandbox *sb = new_sandbox(8u << 20, 100);
  lua_State *L = ffdl_sandbox_state(sb);
  char *err = NULL;
  CHECK(luaL_loadstring(L, "local nap = ... nap() return 'woke'") == LUA_OK);
  lua_pushcfunction(L, sleep_200_ms);
  CHECK(ffdl_policy_call(sb, "test", 1, 1, 0, &err) == FFDL_ETIMEOUT);
  free(err);
  ffdl_sandbox_free(sb);
}

/* A call inside a call (C called from Lua calling back in) keeps its own,
 * shorter deadline. */
static int call_inner_loop(lua_State *L) {
  ffdl_sandbox *sb = lua_touserdata(L, lua_upvalueindex(1));
  char *err = NULL;
  lua_pushvalue(L, 1);
  int rc = ffdl_policy_call(sb, "place", 0, 0, 50, &err);
  lua_pushboolean(L, rc == FFDL_ETIMEOUT);
  free(err);
  return 1;
}

static void nested_call_keeps_its_deadline(void) {
  ffdl_sandbox *sb = new_sandbox(8u << 20, 5000);
  lua_State *L = ffdl_sandbox_state(sb);
  char *err = NULL;
  /* the chunk hands a looping function to the C function it is given */
  CHECK(luaL_loadstring(L, "local inner = ... return inner(function() while true do end end)") ==
        LUA_OK);
  lua_pushlightuserdata(L, sb);
  lua_pushcclosure(L, call_inner_loop, 1);
  CHECK(ffdl_policy_call(sb, "outer", 1, 1, 0, &err) == FFDL_OK);
  CHECK(lua_toboolean(L, -1)); /* the inner call ran out of its 50 ms; the outer went on */
  lua_pop(L, 1);
  ffdl_sandbox_free(sb);
}

static void memory_bomb_table(void) {
  expect_error("local t = {} for i = 1, 1e9 do t[i] = {i} end", FFDL_ELIMIT,
               "memory limit of 8 MiB exceeded");
}
/* A policy that keeps its memory up to the cap: its own calls fail, and
 * the runtime can still push the next call's arguments (outside any
 * protected call, a refusal would end the process). */
static void memory_kept_to_the_cap(void) {
  ffdl_sandbox *sb = new_sandbox(8u << 20, 5000);
  lua_State *L = ffdl_sandbox_state(sb);
  char *err = NULL;
  lua_newtable(L); /* kept alive here, as a policy module keeps its upvalues */
  int kept = lua_gettop(L);
  const char fill[] = "local kept = ... while true do kept[#kept + 1] = {} end";
  CHECK(luaL_loadstring(L, fill) == LUA_OK);
  lua_pushvalue(L, kept);
  CHECK(ffdl_policy_call(sb, "test", 1, 0, 0, &err) == FFDL_ELIMIT);
  free(err);
  CHECK(ffdl_sandbox_memory_used(sb) > (7u << 20)); /* what it kept is alive */
  for (int i = 0; i < 100; i++) { /* what the scheduler pushes for a job, and more */
    lua_createtable(L, 0, 16);
    lua_rawseti(L, kept, -i - 1);
  }
  CHECK(luaL_loadstring(L, fill) == LUA_OK);
  lua_pushvalue(L, kept);
  CHECK(ffdl_policy_call(sb, "test", 1, 0, 0, &err) == FFDL_ELIMIT);
  free(err);
  lua_pop(L, 1);
  ffdl_sandbox_free(sb);
}

static void finalizer_refused(void) {
  expect_error("setmetatable({}, {__gc = function() while true do end end})", FFDL_ELUA,
               "__gc is not allowed");
}

static void memory_bomb_string(void) {
  expect_error("return string.rep('x', 1 << 30)", FFDL_ELIMIT, "memory limit");
}
static void memory_bomb_inside_pcall(void) {
  expect_error("local ok = pcall(function() local s = 'x' while true do s = s .. s end end)\n"
               "return 'swallowed'",
               FFDL_ELIMIT, "memory limit");
}
static void deep_recursion(void) {
  /* 200,000 calls deep: under AddressSanitizer on a busy machine that took
   * longer than 200 ms, and the deadline came first */
  expect_error_within(64u << 20, 10000, "local function f(n) return 1 + f(n + 1) end return f(1)",
                      FFDL_ELUA, "stack overflow");
}
static void error_with_table(void) {
  expect_error("error({code = 1})", FFDL_ELUA, "(error object is a table value)");
}
static void globals_do_not_leak_between_chunks(void) {
  ffdl_sandbox *sb = new_sandbox(0, 0);
  char *err = NULL;
  CHECK(run(sb, "secret = 42", &err) == FFDL_OK);
  CHECK(run(sb, "assert(secret == nil, 'leaked')", &err) == FFDL_OK);
  ffdl_sandbox_free(sb);
}
static void json_round_trip(void) {
  ffdl_sandbox *sb = new_sandbox(0, 0);
  char *err = NULL;
  int rc = run(sb,
               "local t = ffdl.json.decode('{\"a\":[1,2.5,\"x\"],\"b\":null}')\n"
               "assert(t.a[2] == 2.5 and t.b == ffdl.json.null)\n"
               "assert(ffdl.json.encode({a = {1, 2}}) == '{\"a\":[1,2]}')\n"
               "local v, e = ffdl.json.decode('{bad')\n"
               "assert(v == nil and e:find('line 1'))",
               &err);
  if (rc) fprintf(stderr, "%s\n", err);
  CHECK(rc == FFDL_OK);
  ffdl_sandbox_free(sb);
}

/* Fills N bytes at P with a pattern made from SEED. */
static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    p[i] = (unsigned char)(seed + i * 7);
}

static int intact(const unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != (unsigned char)(seed + i * 7)) return 0;
  return 1;
}

/* The small-object pool: blocks of every size keep their bytes across
 * growth and shrinking, between small and large, and none overlap. */
static void pool_blocks_keep_their_bytes(void) {
  enum { N = 3000 };
  static unsigned char *blocks[N];
  static size_t sizes[N];
  ffdl_luapool *pool = ffdl_luapool_new();
  CHECK(pool);
  for (int i = 0; i < N; i++) {
    sizes[i] = (size_t)(i * 37 % 600) + 1; /* small and large */
    blocks[i] = ffdl_luapool_realloc(pool, NULL, 0, sizes[i]);
    CHECK(blocks[i]);
    fill(blocks[i], sizes[i], (unsigned)i);
  }
  for (int i = 0; i < N; i += 2) { /* free half: their blocks are reused below */
    CHECK(ffdl_luapool_realloc(pool, blocks[i], sizes[i], 0) == NULL);
    blocks[i] = NULL;
  }
  for (int i = 1; i < N; i += 2) { /* grow or shrink the other half */
    size_t to = (size_t)(i * 53 % 700) + 1, kept = to < sizes[i] ? to : sizes[i];
    blocks[i] = ffdl_luapool_realloc(pool, blocks[i], sizes[i], to);
    CHECK(blocks[i]);
    CHECK(intact(blocks[i], kept, (unsigned)i));
    fill(blocks[i], to, (unsigned)i + 1);
    sizes[i] = to;
  }
  for (int i = 0; i < N; i += 2) {
    blocks[i] = ffdl_luapool_realloc(pool, NULL, 0, sizes[i]);
    CHECK(blocks[i]);
    fill(blocks[i], sizes[i], (unsigned)i + 1);
  }
  for (int i = 0; i < N; i++) /* a block overlapping another would have lost its pattern */
    CHECK(intact(blocks[i], sizes[i], (unsigned)i + 1));
  for (int i = 0; i < N; i++)
    ffdl_luapool_realloc(pool, blocks[i], sizes[i], 0);
  ffdl_luapool_free(pool);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"os_execute", os_execute},
      {"io_open", io_open},
      {"require_module", require_module},
      {"load_string", load_string},
      {"dofile_call", dofile_call},
      {"package_loadlib", loadstring_via_package},
      {"debug_library", debug_library},
      {"string_dump", string_dump},
      {"string_dump_via_method", string_dump_via_method},
      {"string_metatable_hidden", string_metatable_hidden},
      {"modify_shared_library", modify_shared_library},
      {"collectgarbage_stop", collectgarbage_stop},
      {"collectgarbage_count_allowed", collectgarbage_count_allowed},
      {"bytecode_refused", bytecode_refused},
      {"infinite_loop", infinite_loop},
      {"infinite_loop_inside_pcall", infinite_loop_inside_pcall},
      {"infinite_loop_in_coroutine", infinite_loop_in_coroutine},
      {"infinite_loop_in_created_coroutine", infinite_loop_in_created_coroutine},
      {"infinite_loop_on_another_thread", infinite_loop_on_another_thread},
      {"cpu_time_deadlines_ignore_time_off_the_cpu", cpu_time_deadlines_ignore_time_off_the_cpu},
      {"memory_kept_to_the_cap", memory_kept_to_the_cap},
      {"finalizer_refused", finalizer_refused},
      {"nested_call_keeps_its_deadline", nested_call_keeps_its_deadline},
      {"memory_bomb_table", memory_bomb_table},
      {"memory_bomb_string", memory_bomb_string},
      {"memory_bomb_inside_pcall", memory_bomb_inside_pcall},
      {"deep_recursion", deep_recursion},
      {"error_with_table", error_with_table},
      {"globals_do_not_leak_between_chunks", globals_do_not_leak_between_chunks},
      {"json_round_trip", json_round_trip},
      {"pool_blocks_keep_their_bytes", pool_blocks_keep_their_bytes},
      {NULL, NULL}};
  return run_tests(cases, argc, argv);
}
