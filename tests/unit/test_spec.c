/* The validation pipeline through its C interface. */
#include "core/error.h"
#include "policy/spec.h"
#include "runner.h"

#include <string.h>

static ffdl_generation *load(void) {
  ffdl_generation_opts opts = {.policies_dir = FFDL_POLICIES_DIR, .lua_dir = FFDL_LUA_DIR};
  ffdl_generation *gen;
  char *err = NULL;
  int rc = ffdl_generation_load(&opts, &gen, &err);
  if (rc) fprintf(stderr, "%s\n", err);
  CHECK(rc == FFDL_OK);
  CHECK(strlen(ffdl_generation_hash(gen)) == 64);
  return gen;
}

static const char GOOD[] = "name: t\n"
                           "memory: 2GiB\n"
                           "framework:\n"
                           "  name: tensorflow\n"
                           "  version: \"1.5.0-py3\"\n"
                           "  command: python3 train.py\n";

static void valid_manifest_gives_spec(void) {
  ffdl_generation *gen = load();
  ffdl_diags diags = {0};
  json_t *spec = NULL;
  CHECK(ffdl_spec_check_buffer(gen, "m.yml", GOOD, strlen(GOOD), FFDL_SPEC_AUTO, &diags, &spec) ==
        FFDL_OK);
  CHECK(diags.n == 0);
  json_t *res = json_object_get(spec, "resources");
  CHECK(json_integer_value(json_object_get(res, "memory_bytes")) == 2LL << 30);
  CHECK(strcmp(json_string_value(json_object_get(json_object_get(spec, "framework"), "image")),
               "tensorflow/tensorflow:1.5.0-py3") == 0);
  json_decref(spec);
  ffdl_diags_free(&diags);
  ffdl_generation_free(gen);
}

static void every_error_is_reported(void) {
  ffdl_generation *gen = load();
  static const char bad[] = "name: t\nlearners: two\ncpus: -1\nframework:\n  name: tf\n";
  ffdl_diags diags = {0};
  CHECK(ffdl_spec_check_buffer(gen, "m.yml", bad, strlen(bad), FFDL_SPEC_AUTO, &diags, NULL) ==
        FFDL_EINVALID);
  CHECK(ffdl_diags_errors(&diags) == 4); /* learners, cpus, command, version */
  ffdl_diags_free(&diags);
  ffdl_generation_free(gen);
}

static void secrets_are_redacted(void) {
  json_t *spec = json_pack("{s:[{s:{s:s}}]}", "data_stores", "connection", "password", "hunter2");
  json_t *shown = ffdl_spec_redacted(spec);
  char *text = json_dumps(shown, 0);
  CHECK(strstr(text, "hunter2") == NULL);
  CHECK(strstr(text, "***") != NULL);
  free(text);
  json_decref(shown);
  json_decref(spec);
}

static void generation_needs_policies(void) {
  ffdl_generation_opts opts = {.policies_dir = "/nonexistent", .lua_dir = FFDL_LUA_DIR};
  ffdl_generation *gen;
  char *err = NULL;
  CHECK(ffdl_generation_load(&opts, &gen, &err) != FFDL_OK);
  CHECK_CONTAINS(err, "/nonexistent");
  free(err);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {{"valid_manifest_gives_spec", valid_manifest_gives_spec},
                                    {"every_error_is_reported", every_error_is_reported},
                                    {"secrets_are_redacted", secrets_are_redacted},
                                    {"generation_needs_policies", generation_needs_policies},
                                    {NULL, NULL}};
  return run_tests(cases, argc, argv);
}
