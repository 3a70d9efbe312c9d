/*
 * fuzz_manifest.c: libFuzzer entry over the whole validation pipeline
 * (YAML/JSON reader, schema, validate policy). The first byte picks the
 * format, the rest is the file.
 */
#include "policy/spec.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static ffdl_generation *generation(void) {
  static ffdl_generation *gen;
  if (!gen) {
    ffdl_generation_opts opts = {.policies_dir = FFDL_POLICIES_DIR, .lua_dir = FFDL_LUA_DIR};
    char *err = NULL;
    if (ffdl_generation_load(&opts, &gen, &err) != 0) abort();
  }
  return gen;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > FFDL_SPEC_MAX_BYTES) return 0;
  static const char *const names[] = {"fuzz.yml", "fuzz.json", "fuzz.lua", "fuzz.yaml"};
  const char *name = names[data[0] & 3];
  char *text = malloc(size);
  if (!text) return 0;
  memcpy(text, data + 1, size - 1);
  text[size - 1] = '\0';
  ffdl_diags diags = {0};
  json_t *spec = NULL;
  ffdl_spec_check_buffer(generation(), name, text, size - 1, FFDL_SPEC_AUTO, &diags, &spec);
  json_decref(spec);
  ffdl_diags_free(&diags);
  free(text);
  return 0;
}
