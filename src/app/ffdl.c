/*
 * ffdl.c: the `ffdl` command: validate, info, version.
 * Owns: argument parsing, exit codes and what the user reads. Must not:
 * hold policy, schema or placement logic.
 */
#include "app/client.h"
#include "app/paths.h"
#include "app/runtime.h"
#include "core/error.h"
#include "core/log.h"
#include "gpu/inventory.h"
#include "app/simulate_cmd.h"
#include "policy/generation.h"
#include "policy/policytest.h"
#include "policy/reload.h"
#include "policy/spec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_INVALID = 2 };

static void usage(FILE *out) {
  fputs("usage: ffdl COMMAND [ARGS]\n"
        "\n"
        "commands:\n"
        "  validate [--print] [--policies DIR] FILE...   check manifests and Lua job specs\n"
        "  info                                          CPUs, memory and GPUs on this machine\n"
        "  list                                          jobs in the store ($FFDL_HOME)\n"
        "  show [--json] ID                              one job: status, transitions, metrics\n"
        "  explain ID                                    why the job is where it is (decisions)\n"
        "  policy test [DIR]                             hook checks and DIR/tests/*.lua\n"
        "  policy reload | status                        on the server (FFDL_URL)\n"
        "  policy simulate --cluster C.yml --workload T.csv [--policies DIR]\n"
        "                  [--compare DIR2] [--json]    replay a trace in virtual time\n"
        "\nwith FFDL_URL (+ FFDL_TOKEN) or DLAAS_URL (+ DLAAS_USERNAME, DLAAS_PASSWORD):\n"
        "  train MANIFEST MODEL_DIR_OR_ZIP   list   show [--json] ID   logs [--follow] ID\n"
        "  halt ID   delete ID   download ID --trainedmodel|--definition [--filename F]\n"
        "  user add NAME [--admin] | user list | user remove NAME\n"
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
    if (strcmp(argv[i], "--print") == 0)
      print = 1;
    else if (strcmp(argv[i], "--policies") == 0 && i + 1 < argc)
      policies = argv[++i];
    else if (strncmp(argv[i], "--policies=", 11) == 0)
      policies = argv[i] + 11;
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
    fputs(
        "ffdl validate: no files given\nusage: ffdl validate [--print] [--policies DIR] FILE...\n",
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

static int cmd_policy(int argc, char **argv) {
  if (argc >= 2 && (!strcmp(argv[1], "reload") || !strcmp(argv[1], "status")))
    return ffdl_client_policy(argv[1]);
  if (argc >= 2 && !strcmp(argv[1], "simulate")) return ffdl_cmd_simulate(argc - 2, argv + 2);
  if (argc < 2 || strcmp(argv[1], "test") != 0) {
    fputs("usage: ffdl policy test [DIR] | simulate ... | reload | status\n", stderr);
    return EXIT_INVALID;
  }
  const char *dir = argc > 2 ? argv[2] : ffdl_paths_default_policies();
  ffdl_generation *gen;
  if (load_generation(dir, &gen) != FFDL_OK) return EXIT_FAILED;
  int passed, failed;
  char *problems = NULL;
  int conform = ffdl_policies_check_hooks(gen, &problems);
  if (conform != FFDL_OK) fprintf(stdout, "FAIL %s: %s\n", dir, problems);
  free(problems);
  int rc = ffdl_policy_test_run(gen, dir, stdout, &passed, &failed);
  if (conform != FFDL_OK) rc = FFDL_EINVALID;
  ffdl_generation_free(gen);
  if (passed + failed == 0) {
    fprintf(stderr, "ffdl policy test: no tests in %s/tests\n", dir);
    return EXIT_FAILED;
  }
  return rc == FFDL_OK ? EXIT_OK : EXIT_FAILED;
}

static void format_ms(json_t *ms, char *out, size_t cap) {
  if (!json_is_integer(ms)) {
    snprintf(out, cap, "-");
    return;
  }
  time_t secs = (time_t)(json_integer_value(ms) / 1000);
  struct tm tm;
  localtime_r(&secs, &tm);
  strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
}

static ffdl_jobstore *open_store(void) {
  ffdl_jobstore *store = NULL;
  char *err = NULL;
  if (ffdl_runtime_open_store(&store, &err) != FFDL_OK) {
    fprintf(stderr, "ffdl: cannot open the job store: %s\n", err ? err : "?");
    free(err);
    return NULL;
  }
  return store;
}

static const char *str_or_dash(json_t *v) {
  return json_is_string(v) ? json_string_value(v) : "-";
}

static int cmd_list(void) {
  ffdl_jobstore *store = open_store();
  if (!store) return EXIT_FAILED;
  json_t *jobs = ffdl_jobstore_list(store);
  printf("%-22s %-24s %-12s %-11s %-19s %-19s\n", "ID", "Name", "Framework", "Status", "Submitted",
         "Completed");
  size_t i;
  json_t *job;
  json_array_foreach(jobs, i, job) {
    char submitted[32], completed[32];
    format_ms(json_object_get(job, "submitted_ms"), submitted, sizeof submitted);
    format_ms(json_object_get(job, "completed_ms"), completed, sizeof completed);
    printf("%-22s %-24s %-12s %-11s %-19s %-19s\n", str_or_dash(json_object_get(job, "id")),
           str_or_dash(json_object_get(job, "name")),
           str_or_dash(json_object_get(job, "framework")),
           str_or_dash(json_object_get(job, "status")), submitted, completed);
  }
  json_decref(jobs);
  ffdl_jobstore_close(store);
  return EXIT_OK;
}

static void print_job_text(json_t *job) {
  printf("ID:         %s\n", str_or_dash(json_object_get(job, "id")));
  printf("Name:       %s\n", str_or_dash(json_object_get(job, "name")));
  printf("Framework:  %s\n", str_or_dash(json_object_get(job, "framework")));
  printf("Status:     %s", str_or_dash(json_object_get(job, "status")));
  if (json_is_string(json_object_get(job, "error_code")))
    printf(" (%s)", json_string_value(json_object_get(job, "error_code")));
  printf("\nTransitions:\n");
  size_t i;
  json_t *t;
  json_array_foreach(json_object_get(job, "transitions"), i, t) {
    char when[32];
    format_ms(json_object_get(t, "time_ms"), when, sizeof when);
    const char *reason = str_or_dash(json_object_get(t, "reason"));
    printf("  %s  %-11s %.*s\n", when, str_or_dash(json_object_get(t, "status")),
           (int)strcspn(reason, "\n"), reason);
  }
  json_t *metrics = json_object_get(job, "metrics");
  if (json_array_size(metrics) > 0) {
    char *last = json_dumps(json_array_get(metrics, json_array_size(metrics) - 1), JSON_COMPACT);
    printf("Last metrics: %s\n", last ? last : "");
    free(last);
  }
}

static int cmd_explain(int argc, char **argv) {
  if (argc < 2) return fputs("usage: ffdl explain ID\n", stderr), EXIT_INVALID;
  if (ffdl_client_url()) return ffdl_client_explain(argv[1]);
  ffdl_jobstore *store = open_store();
  if (!store) return EXIT_FAILED;
  json_t *job = ffdl_jobstore_get(store, argv[1]);
  if (!job) {
    ffdl_jobstore_close(store);
    fprintf(stderr, "ffdl: no job %s in the store\n", argv[1]);
    return EXIT_FAILED;
  }
  json_t *transitions = json_object_get(job, "transitions");
  json_t *last = json_array_get(transitions, json_array_size(transitions) - 1);
  json_t *doc = json_pack("{s:s,s:O?,s:O?,s:o}", "model_id", argv[1], "status",
                          json_object_get(job, "status"), "since", json_object_get(last, "time_ms"),
                          "decisions", ffdl_jobstore_decisions(store, argv[1]));
  ffdl_print_explanation(doc);
  json_decref(doc);
  json_decref(job);
  ffdl_jobstore_close(store);
  return EXIT_OK;
}

static int cmd_show(int argc, char **argv) {
  int as_json = 0;
  const char *id = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0)
      as_json = 1;
    else
      id = argv[i];
  }
  if (!id) {
    fputs("usage: ffdl show [--json] ID\n", stderr);
    return EXIT_INVALID;
  }
  ffdl_jobstore *store = open_store();
  if (!store) return EXIT_FAILED;
  json_t *job = ffdl_jobstore_get(store, id);
  ffdl_jobstore_close(store);
  if (!job) {
    fprintf(stderr, "ffdl: no job %s in the store\n", id);
    return EXIT_FAILED;
  }
  json_t *spec = json_object_get(job, "spec");
  if (spec) json_object_set_new(job, "spec", ffdl_spec_redacted(spec));
  if (as_json) {
    char *text = json_dumps(job, JSON_INDENT(2) | JSON_SORT_KEYS);
    printf("%s\n", text ? text : "{}");
    free(text);
  } else {
    print_job_text(job);
  }
  json_decref(job);
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
  /* with a server configured, the FfDL verbs go to it; list and show read
   * the local store otherwise */
  if (ffdl_client_url() || (strcmp(cmd, "list") != 0 && strcmp(cmd, "show") != 0)) {
    int rc = ffdl_client_main(argc - 1, argv + 1);
    if (rc >= 0) return rc;
  }
  if (strcmp(cmd, "list") == 0) return cmd_list();
  if (strcmp(cmd, "policy") == 0) return cmd_policy(argc - 1, argv + 1);
  if (strcmp(cmd, "explain") == 0) return cmd_explain(argc - 1, argv + 1);
  if (strcmp(cmd, "show") == 0) return cmd_show(argc - 1, argv + 1);
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
