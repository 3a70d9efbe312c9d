/* Policy limits: the deadline of each hook, the memory cap of each
 * generation, their configuration, and the events of calls that hit one. */
#include "core/error.h"
#include "policy/generation.h"
#include "policy/limits.h"
#include "runner.h"

#include <lauxlib.h>
#include <pthread.h>
#include <string.h>

static ffdl_sandbox *new_sandbox(const ffdl_sandbox_limits *limits) {
  ffdl_sandbox *sb;
  CHECK(ffdl_sandbox_new(limits, &sb) == FFDL_OK);
  return sb;
}

/* Runs CODE as a chunk through ffdl_policy_call(WHAT, DEADLINE_MS). */
static int run(ffdl_sandbox *sb, const char *what, double deadline_ms, const char *code,
               char **err) {
  lua_State *L = ffdl_sandbox_state(sb);
  ffdl_sandbox_push_env(L);
  int rc = ffdl_sandbox_load(sb, "@hook.lua", code, strlen(code), err);
  if (rc != FFDL_OK) return rc;
  rc = ffdl_policy_call(sb, what, 0, 1, deadline_ms, err);
  if (rc == FFDL_OK) lua_pop(L, 1);
  return rc;
}

static const char SPIN[] = "while true do end";
static const char BOMB[] = "local t = {} for i = 1, 1e9 do t[i] = {i} end";

static void built_in_hook_deadlines(void) {
  ffdl_sandbox *sb = new_sandbox(NULL);
  CHECK(ffdl_sandbox_deadline_for(sb, "place") == 50);
  for (int h = 0; h < FFDL_HOOK_COUNT; h++)
    if (h != FFDL_HOOK_PLACE) CHECK(ffdl_sandbox_deadline_for(sb, ffdl_hook_name(h)) == 1000);
  CHECK(ffdl_sandbox_deadline_for(sb, "conformance") == 1000);
  CHECK(ffdl_sandbox_deadline_for(sb, NULL) == 1000);
  CHECK(ffdl_sandbox_memory_limit(sb) == (size_t)64 << 20);
  ffdl_sandbox_free(sb);
}

static void hook_names(void) {
  CHECK(ffdl_hook_from_name("validate") == FFDL_HOOK_VALIDATE);
  CHECK(ffdl_hook_from_name("admit") == FFDL_HOOK_ADMIT);
  CHECK(ffdl_hook_from_name("order") == FFDL_HOOK_ORDER);
  CHECK(ffdl_hook_from_name("rank") == FFDL_HOOK_RANK);
  CHECK(ffdl_hook_from_name("place") == FFDL_HOOK_PLACE);
  CHECK(ffdl_hook_from_name("hold") == FFDL_HOOK_HOLD);
  CHECK(ffdl_hook_from_name("on_failure") == FFDL_HOOK_ON_FAILURE);
  CHECK(ffdl_hook_from_name("retry") == FFDL_HOOK_ON_FAILURE);
  CHECK(ffdl_hook_from_name("validate.lua") == -1);
  CHECK(ffdl_hook_from_name("Place") == -1);
  CHECK(ffdl_hook_from_name(NULL) == -1);
  CHECK(strcmp(ffdl_hook_name(FFDL_HOOK_ON_FAILURE), "on_failure") == 0);
  CHECK(strcmp(ffdl_hook_name(FFDL_HOOK_COUNT), "other") == 0);
}

static void configured_hook_deadlines(void) {
  ffdl_sandbox_limits limits = {.deadline_ms = 300};
  limits.hook_deadline_ms[FFDL_HOOK_ADMIT] = 200;
  ffdl_sandbox *sb = new_sandbox(&limits);
  CHECK(ffdl_sandbox_deadline_for(sb, "admit") == 200);
  CHECK(ffdl_sandbox_deadline_for(sb, "validate") == 300); /* the configured default */
  CHECK(ffdl_sandbox_deadline_for(sb, "place") == 50);     /* the built-in for place */
  CHECK(ffdl_sandbox_deadline_for(sb, "spec") == 300);
  CHECK(ffdl_sandbox_default_deadline(sb) == 300);
  ffdl_sandbox_free(sb);
}

static void process_defaults_fill_zero_fields(void) {
  ffdl_sandbox_limits defaults = {.memory_limit = 32u << 20};
  defaults.hook_deadline_ms[FFDL_HOOK_PLACE] = 20;
  defaults.hook_deadline_ms[FFDL_HOOK_HOLD] = 70;
  ffdl_sandbox_set_defaults(&defaults);
  ffdl_sandbox_limits own = {0};
  own.hook_deadline_ms[FFDL_HOOK_HOLD] = 80;
  ffdl_sandbox *sb = new_sandbox(&own);
  CHECK(ffdl_sandbox_deadline_for(sb, "place") == 20);
  CHECK(ffdl_sandbox_deadline_for(sb, "hold") == 80); /* its own limit wins */
  CHECK(ffdl_sandbox_memory_limit(sb) == 32u << 20);
  ffdl_sandbox_free(sb);
  ffdl_sandbox_set_defaults(NULL);
  sb = new_sandbox(&own);
  CHECK(ffdl_sandbox_deadline_for(sb, "place") == 50);
  CHECK(ffdl_sandbox_memory_limit(sb) == (size_t)64 << 20);
  ffdl_sandbox_free(sb);
}

static void a_call_without_a_deadline_gets_its_hooks(void) {
  ffdl_sandbox_limits limits = {0};
  limits.hook_deadline_ms[FFDL_HOOK_PLACE] = 20;
  ffdl_sandbox *sb = new_sandbox(&limits);
  char *err = NULL;
  CHECK(run(sb, "place", 0, SPIN, &err) == FFDL_ETIMEOUT);
  CHECK_CONTAINS(err, "hook.lua:1: deadline of 20 ms exceeded");
  free(err);
  /* an explicit deadline still wins */
  CHECK(run(sb, "place", 30, SPIN, &err) == FFDL_ETIMEOUT);
  CHECK_CONTAINS(err, "deadline of 30 ms exceeded");
  free(err);
  /* a call that is no hook gets the default */
  CHECK(run(sb, "conformance", 0, "return 1", &err) == FFDL_OK);
  ffdl_sandbox_free(sb);
}

static void a_deadline_is_recorded_as_an_event(void) {
  ffdl_sandbox_limits limits = {0};
  limits.hook_deadline_ms[FFDL_HOOK_PLACE] = 20;
  ffdl_sandbox *sb = new_sandbox(&limits);
  ffdl_sandbox_set_label(sb, "0123456789abcdef");
  char *err = NULL;
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_PLACE, FFDL_LIMIT_DEADLINE) == 0);
  CHECK(run(sb, "place", 0, SPIN, &err) == FFDL_ETIMEOUT);
  free(err);
  CHECK(run(sb, "place", 0, "return 1", &err) == FFDL_OK); /* no event */
  CHECK(run(sb, "place", 0, "error('plain')", &err) == FFDL_ELUA);
  free(err);
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_PLACE, FFDL_LIMIT_DEADLINE) == 1);
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_PLACE, FFDL_LIMIT_MEMORY) == 0);
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_ADMIT, FFDL_LIMIT_DEADLINE) == 0);
  json_t *events = ffdl_policy_limit_events();
  CHECK(json_array_size(events) == 1);
  json_t *e = json_array_get(events, 0);
  CHECK(!strcmp(json_string_value(json_object_get(e, "hook")), "place"));
  CHECK(!strcmp(json_string_value(json_object_get(e, "limit")), "deadline"));
  CHECK(!strcmp(json_string_value(json_object_get(e, "unit")), "ms"));
  CHECK(!strcmp(json_string_value(json_object_get(e, "generation")), "0123456789abcdef"));
  CHECK(json_real_value(json_object_get(e, "max")) == 20);
  CHECK(json_real_value(json_object_get(e, "value")) > 0);
  CHECK(json_integer_value(json_object_get(e, "at_ms")) > 0);
  CHECK_CONTAINS(json_string_value(json_object_get(e, "error")), "deadline of 20 ms exceeded");
  json_decref(events);
  ffdl_sandbox_free(sb);
}

static void memory_is_recorded_as_an_event(void) {
  ffdl_sandbox_limits limits = {.memory_limit = 8u << 20};
  ffdl_sandbox *sb = new_sandbox(&limits);
  char *err = NULL;
  CHECK(run(sb, "admit", 0, BOMB, &err) == FFDL_ELIMIT);
  CHECK_CONTAINS(err, "memory limit of 8 MiB exceeded");
  free(err);
  CHECK(run(sb, "spec", 0, BOMB, &err) == FFDL_ELIMIT); /* not a hook: "other" */
  free(err);
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_ADMIT, FFDL_LIMIT_MEMORY) == 1);
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_COUNT, FFDL_LIMIT_MEMORY) == 1);
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_ADMIT, FFDL_LIMIT_DEADLINE) == 0);
  json_t *events = ffdl_policy_limit_events();
  CHECK(json_array_size(events) == 2);
  json_t *e = json_array_get(events, 0);
  CHECK(!strcmp(json_string_value(json_object_get(e, "limit")), "memory"));
  CHECK(!strcmp(json_string_value(json_object_get(e, "unit")), "bytes"));
  CHECK(json_is_null(json_object_get(e, "generation"))); /* no label given */
  CHECK(json_real_value(json_object_get(e, "max")) == 8u << 20);
  CHECK(json_real_value(json_object_get(e, "value")) > 8u << 20); /* what it asked for */
  CHECK(!strcmp(json_string_value(json_object_get(json_array_get(events, 1), "hook")), "spec"));
  json_decref(events);
  /* the state survives */
  CHECK(run(sb, "admit", 0, "return 1", &err) == FFDL_OK);
  ffdl_sandbox_free(sb);
}

static void the_last_events_are_kept(void) {
  for (int i = 0; i < FFDL_LIMIT_EVENTS_KEPT + 5; i++) {
    char msg[32];
    snprintf(msg, sizeof msg, "event %d", i);
    ffdl_policy_limit_event("hold", NULL, FFDL_LIMIT_DEADLINE, 10, 11, msg);
  }
  json_t *events = ffdl_policy_limit_events();
  CHECK(json_array_size(events) == FFDL_LIMIT_EVENTS_KEPT);
  CHECK(!strcmp(json_string_value(json_object_get(json_array_get(events, 0), "error")), "event 5"));
  CHECK(!strcmp(json_string_value(
                    json_object_get(json_array_get(events, FFDL_LIMIT_EVENTS_KEPT - 1), "error")),
                "event 24"));
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_HOLD, FFDL_LIMIT_DEADLINE) ==
        FFDL_LIMIT_EVENTS_KEPT + 5);
  json_decref(events);
}

static ffdl_generation *load_generation(size_t memory, char **err) {
  ffdl_generation_opts opts = {.policies_dir = FFDL_POLICIES_DIR, .lua_dir = FFDL_LUA_DIR};
  opts.limits.memory_limit = memory;
  ffdl_generation *gen = NULL;
  *err = NULL;
  ffdl_generation_load(&opts, &gen, err);
  return gen;
}

/* Each generation is its own sandbox with its own cap. */
static void each_generation_has_its_memory_cap(void) {
  char *err = NULL;
  ffdl_generation *big = load_generation(64u << 20, &err);
  CHECK(big);
  ffdl_generation *small = load_generation(16u << 20, &err);
  if (!small) fprintf(stderr, "%s\n", err);
  CHECK(small);
  ffdl_sandbox *sb_big = ffdl_generation_sandbox(big), *sb_small = ffdl_generation_sandbox(small);
  CHECK(ffdl_sandbox_memory_limit(sb_big) == 64u << 20);
  CHECK(ffdl_sandbox_memory_limit(sb_small) == 16u << 20);
  /* 24 MiB of strings fit in the big one only */
  const char *code = "local t = {} for i = 1, 24 do t[i] = string.rep(tostring(i), 1 << 20) end\n"
                     "return #t";
  CHECK(run(sb_small, "admit", 0, code, &err) == FFDL_ELIMIT);
  CHECK_CONTAINS(err, "memory limit of 16 MiB exceeded");
  free(err);
  CHECK(run(sb_big, "admit", 0, code, &err) == FFDL_OK);
  json_t *events = ffdl_policy_limit_events();
  CHECK(json_array_size(events) == 1);
  CHECK(!strcmp(json_string_value(json_object_get(json_array_get(events, 0), "generation")),
                ffdl_generation_hash(small)));
  json_decref(events);
  ffdl_generation_free(big);
  ffdl_generation_free(small);
}

/* A cap smaller than the generation itself fails its load, with a reason. */
static void a_cap_too_small_for_the_generation_fails_its_load(void) {
  char *err = NULL;
  ffdl_generation *gen = load_generation(64u << 20, &err);
  CHECK(gen);
  size_t used = ffdl_sandbox_memory_used(ffdl_generation_sandbox(gen));
  fprintf(stderr, "a generation holds %zu bytes\n", used);
  ffdl_generation_free(gen);
  gen = load_generation(used / 2, &err);
  CHECK(!gen);
  CHECK_CONTAINS(err, "memory limit of 0.");
  CHECK_CONTAINS(err, ".lua");
  free(err);
}

static int from_json(const char *text, ffdl_sandbox_limits *limits, char **field, char **err) {
  json_error_t jerr;
  json_t *config = json_loads(text, JSON_DECODE_ANY, &jerr);
  CHECK(config);
  int rc = ffdl_policy_limits_from_json(config, "policy_limits", limits, field, err);
  json_decref(config);
  return rc;
}

static void limits_from_json(void) {
  ffdl_sandbox_limits l = {.memory_limit = 1, .deadline_ms = 5};
  l.hook_deadline_ms[FFDL_HOOK_HOLD] = 7;
  char *field, *err;
  CHECK(from_json("{\"memory_mb\": 32, \"deadline_ms\": {\"place\": 20, \"admit\": 200.5,"
                  " \"retry\": 300, \"default\": 900}}",
                  &l, &field, &err) == FFDL_OK);
  CHECK(!field && !err);
  CHECK(l.memory_limit == 32u << 20);
  CHECK(l.deadline_ms == 900);
  CHECK(l.hook_deadline_ms[FFDL_HOOK_PLACE] == 20);
  CHECK(l.hook_deadline_ms[FFDL_HOOK_ADMIT] == 200.5);
  CHECK(l.hook_deadline_ms[FFDL_HOOK_ON_FAILURE] == 300);
  CHECK(l.hook_deadline_ms[FFDL_HOOK_HOLD] == 7); /* left out: kept */
  CHECK(from_json("{}", &l, &field, &err) == FFDL_OK);
  CHECK(l.memory_limit == 32u << 20);
}

static void expect_invalid(const char *text, const char *want_field, const char *want_err) {
  ffdl_sandbox_limits l = {.memory_limit = 123};
  l.hook_deadline_ms[FFDL_HOOK_PLACE] = 9;
  char *field = NULL, *err = NULL;
  CHECK(from_json(text, &l, &field, &err) == FFDL_EINVALID);
  if (strcmp(field, want_field) != 0) fprintf(stderr, "field %s for %s\n", field, text);
  CHECK(!strcmp(field, want_field));
  CHECK_CONTAINS(err, want_err);
  /* nothing of a rejected config is applied */
  CHECK(l.memory_limit == 123 && l.hook_deadline_ms[FFDL_HOOK_PLACE] == 9 && l.deadline_ms == 0);
  free(field);
  free(err);
}

static void limits_from_json_errors(void) {
  expect_invalid("{\"deadline_ms\": {\"place\": 10, \"plac\": 5}}",
                 "policy_limits.deadline_ms.plac",
                 "unknown hook; the hooks are default, validate, admit, order, rank, place, hold, "
                 "on_failure");
  expect_invalid("{\"deadline_ms\": {\"place\": 0}}", "policy_limits.deadline_ms.place",
                 "must be a positive number, got 0");
  expect_invalid("{\"deadline_ms\": {\"admit\": -5}}", "policy_limits.deadline_ms.admit",
                 "must be a positive number, got -5");
  expect_invalid("{\"deadline_ms\": {\"admit\": \"5\"}}", "policy_limits.deadline_ms.admit",
                 "must be a positive number, got \"5\"");
  expect_invalid("{\"deadline_ms\": {\"hold\": 60001}}", "policy_limits.deadline_ms.hold",
                 "must be at most 60000, got 60001");
  expect_invalid("{\"deadline_ms\": {\"default\": true}}", "policy_limits.deadline_ms.default",
                 "must be a positive number, got true");
  expect_invalid("{\"deadline_ms\": 50}", "policy_limits.deadline_ms", "must be a mapping");
  expect_invalid("{\"memory_mb\": 0}", "policy_limits.memory_mb", "must be a positive number");
  expect_invalid("{\"memory_mb\": 0.5}", "policy_limits.memory_mb", "must be at least 1, got 0.5");
  expect_invalid("{\"memory_mb\": 70000}", "policy_limits.memory_mb", "must be at most 65536");
  expect_invalid("{\"memory_mb\": 8, \"memory\": 8}", "policy_limits.memory",
                 "unknown setting; the settings are memory_mb, deadline_ms");
  expect_invalid("[1]", "policy_limits", "must be a mapping");
}

/* Generations are built and tested on the thread pool while the loop calls
 * hooks: the counters, the event list and the latency histogram are shared. */
#define THREADS 4
#define CALLS 25

static void *call_many(void *arg) {
  (void)arg;
  ffdl_sandbox_limits limits = {.memory_limit = 8u << 20};
  limits.hook_deadline_ms[FFDL_HOOK_PLACE] = 1;
  ffdl_sandbox *sb = new_sandbox(&limits);
  char *err = NULL;
  for (int i = 0; i < CALLS; i++) {
    CHECK(run(sb, "place", 0, SPIN, &err) == FFDL_ETIMEOUT);
    free(err);
    CHECK(run(sb, "admit", 0, BOMB, &err) == FFDL_ELIMIT);
    free(err);
    CHECK(run(sb, "rank", 0, "return 1", &err) == FFDL_OK);
    json_decref(ffdl_policy_limit_events());
  }
  ffdl_sandbox_free(sb);
  return NULL;
}

static void events_and_latency_from_many_threads(void) {
  ffdl_latency before, after;
  ffdl_policy_call_latency(&before);
  pthread_t threads[THREADS];
  for (int t = 0; t < THREADS; t++)
    CHECK(pthread_create(&threads[t], NULL, call_many, NULL) == 0);
  for (int t = 0; t < THREADS; t++)
    pthread_join(threads[t], NULL);
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_PLACE, FFDL_LIMIT_DEADLINE) == THREADS * CALLS);
  CHECK(ffdl_policy_limit_exceeded(FFDL_HOOK_ADMIT, FFDL_LIMIT_MEMORY) == THREADS * CALLS);
  json_t *events = ffdl_policy_limit_events();
  CHECK(json_array_size(events) == FFDL_LIMIT_EVENTS_KEPT);
  json_decref(events);
  ffdl_policy_call_latency(&after);
  CHECK(after.count - before.count == 3 * THREADS * CALLS);
  unsigned long last = after.buckets[FFDL_LATENCY_BUCKET_COUNT - 1];
  CHECK(last <= after.count);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"built_in_hook_deadlines", built_in_hook_deadlines},
      {"hook_names", hook_names},
      {"configured_hook_deadlines", configured_hook_deadlines},
      {"process_defaults_fill_zero_fields", process_defaults_fill_zero_fields},
      {"a_call_without_a_deadline_gets_its_hooks", a_call_without_a_deadline_gets_its_hooks},
      {"a_deadline_is_recorded_as_an_event", a_deadline_is_recorded_as_an_event},
      {"memory_is_recorded_as_an_event", memory_is_recorded_as_an_event},
      {"the_last_events_are_kept", the_last_events_are_kept},
      {"each_generation_has_its_memory_cap", each_generation_has_its_memory_cap},
      {"a_cap_too_small_for_the_generation_fails_its_load",
       a_cap_too_small_for_the_generation_fails_its_load},
      {"limits_from_json", limits_from_json},
      {"limits_from_json_errors", limits_from_json_errors},
      {"events_and_latency_from_many_threads", events_and_latency_from_many_threads},
      {NULL, NULL}};
  return run_tests(cases, argc, argv);
}
