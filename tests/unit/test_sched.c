/* The scheduler's C parts: the GPU ledger's windowed sums, the cluster's
 * bucket index (candidate order, holds, room filters). */
#include "core/error.h"
#include "orch/cluster.h"
#include "orch/ledger.h"
#include "runner.h"

#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <string.h>

#define HOUR 3600.0
#define NEAR(a, b) (fabs((a) - (b)) < 1e-9)

static void ledger_counts_running_jobs_up_to_now(void) {
  ffdl_ledger *l;
  CHECK(ffdl_ledger_new(&l) == FFDL_OK);
  CHECK(ffdl_ledger_start(l, "vision", "ann", 4, 10 * HOUR) == FFDL_OK);
  CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_TEAM, "vision", 24 * HOUR, 12 * HOUR), 8));
  CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_USER, "ann", 1 * HOUR, 12 * HOUR), 4));
  CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_TEAM, "nlp", 24 * HOUR, 12 * HOUR), 0));
  ffdl_ledger_free(l);
}

static void ledger_window_slides_over_finished_jobs(void) {
  ffdl_ledger *l;
  CHECK(ffdl_ledger_new(&l) == FFDL_OK);
  /* 2 GPUs from 10:00 to 14:00: 8 GPU-hours */
  CHECK(ffdl_ledger_start(l, "vision", "ann", 2, 10 * HOUR) == FFDL_OK);
  ffdl_ledger_stop(l, "vision", "ann", 2, 10 * HOUR, 14 * HOUR);
  CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_TEAM, "vision", 24 * HOUR, 20 * HOUR), 8));
  /* the window (12:00, 20:00] holds two of the four hours */
  CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_TEAM, "vision", 8 * HOUR, 20 * HOUR), 4));
  /* half an hour into the window's first hour counts half of it */
  CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_TEAM, "vision", 6.5 * HOUR, 20 * HOUR), 1));
  CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_TEAM, "vision", 5 * HOUR, 20 * HOUR), 0));
  ffdl_ledger_free(l);
}

/* Jobs sharing start times, one starting earlier than those before it
 * (adopted at a restart), stopped in another order: the windowed sums
 * match a job-by-job count at every step. */
static void ledger_stops_jobs_in_any_order(void) {
  enum { N = 60 };
  double start[N];
  int gpus[N], running[N];
  ffdl_ledger *l;
  CHECK(ffdl_ledger_new(&l) == FFDL_OK);
  for (int i = 0; i < N; i++) {
    start[i] = i == N - 1 ? 0.5 * HOUR : (double)(i / 7) * HOUR; /* seven per start */
    gpus[i] = 1 + i % 3;
    running[i] = 1;
    CHECK(ffdl_ledger_start(l, "vision", "ann", gpus[i], start[i]) == FFDL_OK);
  }
  double now = 10 * HOUR, booked = 0; /* GPU-seconds of stopped jobs, all inside the window */
  for (int step = 0; step < N; step++) {
    int i = (step * 37) % N; /* every job once, out of order */
    ffdl_ledger_stop(l, "vision", "ann", gpus[i], start[i], now);
    running[i] = 0;
    booked += gpus[i] * (now - start[i]);
    double expected = booked;
    for (int k = 0; k < N; k++)
      if (running[k]) expected += gpus[k] * (now + HOUR - start[k]);
    CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_USER, "ann", 24 * HOUR, now + HOUR),
               expected / 3600));
  }
  CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_TEAM, "vision", 24 * HOUR, now), booked / 3600));
  ffdl_ledger_free(l);
}

static int holders;
static void count_holder(void *ud, const char *name, int gpus, int jobs) {
  (void)ud;
  CHECK(strcmp(name, "vision") == 0 && gpus == 3 && jobs == 2);
  holders++;
}

static void ledger_lists_what_is_held_now(void) {
  ffdl_ledger *l;
  CHECK(ffdl_ledger_new(&l) == FFDL_OK);
  char name[32];
  for (int i = 0; i < 100; i++) { /* enough names to grow the table */
    snprintf(name, sizeof name, "user%d", i);
    CHECK(ffdl_ledger_start(l, NULL, name, 1, 0) == FFDL_OK);
  }
  ffdl_ledger_start(l, "vision", NULL, 1, 0);
  ffdl_ledger_start(l, "vision", NULL, 2, 5);
  ffdl_ledger_start(l, "nlp", NULL, 2, 5);
  ffdl_ledger_stop(l, "nlp", NULL, 2, 5, 6);
  ffdl_ledger_each_holder(l, FFDL_LEDGER_TEAM, count_holder, NULL);
  CHECK(holders == 1);
  CHECK(NEAR(ffdl_ledger_gpu_hours(l, FFDL_LEDGER_USER, "user77", HOUR, HOUR), 1));
  ffdl_ledger_free(l);
}

static ffdl_cluster *three_nodes(void) {
  ffdl_cluster *cl;
  CHECK(ffdl_cluster_new(&cl) == FFDL_OK);
  CHECK(ffdl_cluster_add_node(cl, "a", 8, 64ull << 30, 4, "V100", NULL) == FFDL_OK);
  CHECK(ffdl_cluster_add_node(cl, "b", 8, 64ull << 30, 4, "V100", NULL) == FFDL_OK);
  CHECK(ffdl_cluster_add_node(cl, "c", 8, 64ull << 30, 4, "K80", NULL) == FFDL_OK);
  return cl;
}

/* Runs CODE with the view as global `cluster`; returns its string result. */
static char *run_view(ffdl_cluster *cl, const char *code) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  void *view = ffdl_cluster_push_view(cl, L, 0);
  lua_setglobal(L, "cluster");
  if (luaL_dostring(L, code) != LUA_OK) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  char *out = strdup(lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
  ffdl_cluster_view_close(view);
  lua_close(L);
  return out;
}

static const char NAMES[] =
    "local req, opts = ...\n"
    "local function names(req, opts)\n"
    "  local out = {}\n"
    "  for n in cluster:candidates(req, nil, opts) do out[#out + 1] = n.name end\n"
    "  return table.concat(out, ',')\n"
    "end\n";

static void candidates_follow_the_strategy_order(void) {
  ffdl_cluster *cl = three_nodes();
  ffdl_request one = {.cpus = 1, .memory = 1 << 30, .gpus = 3};
  int ids[4];
  CHECK(ffdl_cluster_reserve(cl, 1, &one, ids) == FFDL_OK); /* b: 1 GPU free */
  char code[2048];
  snprintf(
      code, sizeof code,
      "%sreturn names({gpus = 1, cpus = 1, memory = 0}, {order = 'binpack'}) .. ' / ' .. "
      "names({gpus = 1, cpus = 1, memory = 0}, {order = 'spread', limit = 2}) .. ' / ' .. "
      "names({gpus = 2, gpu_type = 'V100', cpus = 1, memory = 0}, {order = 'binpack'}) .. ' / ' .. "
      "names({gpus = 4, cpus = 1, memory = 0}, {order = 'spread', capacity = true})",
      NAMES);
  char *got = run_view(cl, code);
  CHECK_CONTAINS(got, "b,a,c / a,c / a / a,c,b");
  free(got);
  ffdl_cluster_free(cl);
}

/* The extra loop values are the node's free_gpus and free_cpus, taken
 * included. */
static void candidates_give_free_gpus_and_cpus(void) {
  ffdl_cluster *cl = three_nodes();
  ffdl_request one = {.cpus = 3, .memory = 1 << 30, .gpus = 3};
  int ids[4];
  CHECK(ffdl_cluster_reserve(cl, 1, &one, ids) == FFDL_OK); /* b: 1 GPU, 5 CPUs free */
  char *got = run_view(cl, "local out = {}\n"
                           "for n, g, c in cluster:candidates({gpus = 1, cpus = 1, memory = 0},\n"
                           "    {a = {cpus = 2, memory = 0, gpus = 1}}, {order = 'binpack'}) do\n"
                           "  assert(g == n.free_gpus and c == n.free_cpus)\n"
                           "  out[#out + 1] = string.format('%s:%d:%g', n.name, g, c)\n"
                           "end\n"
                           "return table.concat(out, ',')");
  CHECK_CONTAINS(got, "b:1:5,a:3:6,c:4:8");
  free(got);
  ffdl_cluster_free(cl);
}

static void held_nodes_are_never_candidates(void) {
  ffdl_cluster *cl = three_nodes();
  CHECK(ffdl_cluster_hold(cl, 0) == FFDL_OK);
  char code[1024];
  snprintf(code, sizeof code,
           "%sreturn names({gpus = 1, cpus = 1, memory = 0}, {order = 'binpack'})", NAMES);
  char *got = run_view(cl, code);
  CHECK(strcmp(got, "b,c") == 0);
  free(got);
  ffdl_request four = {.cpus = 1, .memory = 1, .gpus = 4, .gpu_type = "V100"};
  CHECK(ffdl_cluster_could_fit(cl, &four, 1));  /* b */
  CHECK(!ffdl_cluster_could_fit(cl, &four, 2)); /* a is held */
  ffdl_cluster_clear_holds(cl);
  CHECK(ffdl_cluster_held_count(cl) == 0);
  CHECK(ffdl_cluster_could_fit(cl, &four, 2));
  ffdl_cluster_free(cl);
}

/* Runs CODE as a chunk in L (string result, or the error). */
static char *run_chunk(lua_State *L, const char *code) {
  int top = lua_gettop(L);
  int ok = luaL_dostring(L, code) == LUA_OK;
  char *out = strdup(lua_gettop(L) > top && lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
  lua_settop(L, top);
  if (!ok) fprintf(stderr, "%s\n", out);
  return out;
}

/* Nodes with nothing taken are handed out again by later views: one kept
 * from a closed view fails until a view yields it again; a node with
 * something taken is its own object. */
static void nodes_live_only_as_long_as_their_view(void) {
  ffdl_cluster *cl = three_nodes();
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  void *first = ffdl_cluster_push_view(cl, L, 0);
  lua_setglobal(L, "cluster");
  free(run_chunk(L, "kept = cluster:candidates({gpus = 1, cpus = 1, memory = 0})()"));
  ffdl_cluster_view_close(first);
  char *got = run_chunk(L, "local ok, err = pcall(function() return kept.name end)\n"
                           "return tostring(ok) .. ': ' .. tostring(err)");
  CHECK_CONTAINS(got, "false: ");
  CHECK_CONTAINS(got, "only valid during the hook call");
  free(got);
  void *second = ffdl_cluster_push_view(cl, L, 0);
  lua_setglobal(L, "cluster");
  got = run_chunk(
      L, "local req = {gpus = 1, cpus = 1, memory = 0}\n"
         "local again = cluster:candidates(req)()\n"
         "local taken = cluster:candidates(req, {a = {cpus = 1, memory = 0, gpus = 1}})()\n"
         "return string.format('%s %s %d / %s %d', tostring(again == kept), kept.name,\n"
         "  kept.free_gpus, tostring(taken == kept), taken.free_gpus)");
  CHECK(strcmp(got, "true a 4 / false 3") == 0);
  free(got);
  ffdl_cluster_view_close(second);
  lua_close(L);
  ffdl_cluster_free(cl);
}

static void room_filters_count_gang_learners(void) {
  ffdl_cluster *cl = three_nodes();
  ffdl_request two = {.cpus = 1, .memory = 1, .gpus = 2};
  CHECK(ffdl_cluster_could_fit(cl, &two, 6)); /* two per node */
  CHECK(!ffdl_cluster_could_fit(cl, &two, 7));
  ffdl_request k80 = {.cpus = 1, .memory = 1, .gpus = 2, .gpu_type = "K80"};
  CHECK(!ffdl_cluster_could_fit(cl, &k80, 3));
  ffdl_request p100 = {.cpus = 1, .memory = 1, .gpus = 1, .gpu_type = "P100"};
  CHECK(!ffdl_cluster_could_fit(cl, &p100, 1) && !ffdl_cluster_could_ever_fit(cl, &p100, 1));
  int ids[8];
  ffdl_request all = {.cpus = 8, .memory = 1, .gpus = 4};
  for (int n = 0; n < 3; n++)
    CHECK(ffdl_cluster_reserve(cl, n, &all, ids) == FFDL_OK);
  CHECK(!ffdl_cluster_could_fit(cl, &two, 1));
  CHECK(ffdl_cluster_could_ever_fit(cl, &two, 6) && !ffdl_cluster_could_ever_fit(cl, &two, 7));
  ffdl_cluster_release(cl, 2, &all, ids);
  CHECK(ffdl_cluster_could_fit(cl, &k80, 2));
  CHECK(ffdl_cluster_find(cl, "c") == 2 && ffdl_cluster_find(cl, "zz") == -1);
  ffdl_cluster_sums sums;
  ffdl_cluster_totals(cl, &sums);
  CHECK(sums.gpus == 12 && sums.used_gpus == 8 && NEAR(sums.used_cpus, 16));
  ffdl_cluster_free(cl);
}

/* 5,000 nodes (two summary words per bucket), all busy but three far
 * apart: both filters and both candidate orders find exactly those. */
static void sparse_buckets_of_a_big_cluster(void) {
  ffdl_cluster *cl;
  CHECK(ffdl_cluster_new(&cl) == FFDL_OK);
  char name[32];
  for (int i = 0; i < 5000; i++) {
    snprintf(name, sizeof name, "n%d", i);
    CHECK(ffdl_cluster_add_node(cl, name, 8, 64ull << 30, 8, "A100", NULL) == FFDL_OK);
  }
  ffdl_request all = {.cpus = 1, .memory = 1, .gpus = 8},
               seven = {.cpus = 1, .memory = 1, .gpus = 7};
  int ids[8];
  for (int i = 0; i < 5000; i++)
    if (i != 63 && i != 4096)
      CHECK(ffdl_cluster_reserve(cl, i, i == 4999 ? &seven : &all, ids) == FFDL_OK);
  ffdl_request one = {.cpus = 1, .memory = 1, .gpus = 1}, two = {.cpus = 1, .memory = 1, .gpus = 8};
  CHECK(ffdl_cluster_could_fit(cl, &one, 17) && !ffdl_cluster_could_fit(cl, &one, 18)); /* 8+8+1 */
  CHECK(ffdl_cluster_could_fit(cl, &two, 2) && !ffdl_cluster_could_fit(cl, &two, 3));
  char code[1024];
  snprintf(code, sizeof code,
           "%%sreturn names({gpus = 1, cpus = 1, memory = 0}, {order = 'binpack'}) .. ' / ' .. "
           "names({gpus = 1, cpus = 1, memory = 0}, {order = 'spread'})");
  char full[2048];
  snprintf(full, sizeof full, code, NAMES);
  char *got = run_view(cl, full);
  CHECK_CONTAINS(got, "n4999,n63,n4096 / n63,n4096,n4999");
  free(got);
  ffdl_cluster_free(cl);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"ledger_counts_running_jobs_up_to_now", ledger_counts_running_jobs_up_to_now},
      {"sparse_buckets_of_a_big_cluster", sparse_buckets_of_a_big_cluster},
      {"candidates_give_free_gpus_and_cpus", candidates_give_free_gpus_and_cpus},
      {"ledger_window_slides_over_finished_jobs", ledger_window_slides_over_finished_jobs},
      {"ledger_lists_what_is_held_now", ledger_lists_what_is_held_now},
      {"ledger_stops_jobs_in_any_order", ledger_stops_jobs_in_any_order},
      {"candidates_follow_the_strategy_order", candidates_follow_the_strategy_order},
      {"held_nodes_are_never_candidates", held_nodes_are_never_candidates},
      {"room_filters_count_gang_learners", room_filters_count_gang_learners},
      {"nodes_live_only_as_long_as_their_view", nodes_live_only_as_long_as_their_view},
      {NULL, NULL}};
  return run_tests(cases, argc, argv);
}
