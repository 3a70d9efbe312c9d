/*
 * ffdl.c: the `ffdl` command: validate, info, version.
 * Owns: argument parsing, exit codes and what the user reads. Must not:
 * hold policy, schema or placement logic.
 */
#include "app/paths.h"
#include "core/error.h"
#include "core/log.h"
#include "gpu/inventory.h"
#include "policy/generation.h"
#include "policy/spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_INVALID = 2 };

static void usage(FILE *out) {
  fputs("usage: ffdl COMMAND [ARGS]\n"
        "\n"
        "commands:\n"
        "  validate [--print] [--policies DIR] FILE...   check manifests and Lua job specs\n"
        "  info                                          CPUs, memory and GPUs on this machine\n"
        "  version                                       print the version\n"
        "\n"
        "validate exits 0 when every file is valid and 2 when any is not;\n"
        "each problem is one line: FILE:LINE:COL: field.path: message\n",
        out);
}

static int load_generation(const char *policies, ffdl_generation **gen) {
  ffdl_generation_opts opts = {.policies_dir = policies, .lua_dir = ffdl_paths_lua_dir()};
  char *err;
  int rc = ffdl_generation_load(&opts, gen, &err);
  if (rc != FFDL_OK) {
    fprintf(stderr, "ffdl: cannot load the policies: %s\n", err);
    free(err);
  }
  return rc;
}

static void print_spec(const json_t *spec) {
  json_t *shown = ffdl_spec_redacted(spec);
  char *text = shown ? json_dumps(shown, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
  if (text) printf("%s\n", text);
  free(text);
  json_decref(shown);
}

static int cmd_validate(int argc, char **argv) {
  int print = 0;
  const char *policies = NULL;
  int first_file = argc;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--print") == 0) print = 1;
    else if (strcmp(argv[i], "--policies") == 0 && i + 1 < argc) policies = argv[++i];
    else if (strncmp(argv[i], "--policies=", 11) == 0) policies = argv[i] + 11;
    else if (strcmp(argv[i], "--") == 0) {
      first_file = i + 1;
      break;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      fprintf(stderr, "ffdl validate: unknown option %s\n", argv[i]);
      return EXIT_INVALID;
    } else {
      first_file = i;
      break;
    }
  }
  if (first_file >= argc) {
    fputs("ffdl validate: no files given\nusage: ffdl validate [--print] [--policies DIR] FILE...\n",
          stderr);
    return EXIT_INVALID;
  }
  ffdl_generation *gen;
  if (load_generation(policies ? policies : ffdl_paths_default_policies(), &gen) != FFDL_OK)
    return EXIT_INVALID;
  int invalid = 0;
  for (int i = first_file; i < argc; i++) {
    ffdl_diags diags = {0};
    json_t *spec = NULL;
    if (ffdl_spec_check_file(gen, argv[i], &diags, print ? &spec : NULL) != FFDL_OK) invalid = 1;
    ffdl_diags_print(&diags, argv[i], stderr);
    if (spec) print_spec(spec);
    json_decref(spec);
    ffdl_diags_free(&diags);
  }
  ffdl_generation_free(gen);
  return invalid ? EXIT_INVALID : EXIT_OK;
}

static int cmd_info(void) {
  ffdl_inventory inv;
  ffdl_inventory_probe(&inv);
  printf("cpus:   %d\n", inv.cpus);
  printf("memory: %.1f GiB\n", (double)inv.memory_bytes / (1u << 30));
  if (inv.gpu_count == 0) {
    printf("gpus:   no GPU: %s\n", inv.no_gpu_reason);
  } else {
    printf("gpus:   %d\n", inv.gpu_count);
    for (int i = 0; i < inv.gpu_count; i++)
      printf("  [%d] %s, %.1f GiB, %s\n", inv.gpus[i].index, inv.gpus[i].name,
             (double)inv.gpus[i].memory_bytes / (1u << 30), inv.gpus[i].uuid);
  }
  ffdl_inventory_free(&inv);
  return EXIT_OK;
}

int main(int argc, char **argv) {
  ffdl_log_init();
  if (argc < 2) {
    usage(stderr);
    return EXIT_INVALID;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "validate") == 0) return cmd_validate(argc - 1, argv + 1);
  if (strcmp(cmd, "info") == 0) return cmd_info();
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
    printf("ffdl %s\n", FFDL_VERSION);
    return EXIT_OK;
  }
  if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
    usage(stdout);
    return EXIT_OK;
  }
  fprintf(stderr, "ffdl: unknown command '%s'\n", cmd);
  usage(stderr);
  return EXIT_INVALID;
}
