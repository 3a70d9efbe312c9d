/*
 * simulate_cmd.c: `ffdl policy simulate`, the command line around
 * src/orch/simulate.c. Owns: options, loading the policy generations, the
 * side-by-side report and the list of jobs that a second policy set
 * placed or ordered differently. Must not: simulate anything itself.
 */
#include "app/simulate_cmd.h"
#include "app/paths.h"
#include "core/error.h"
#include "orch/simulate.h"
#include "policy/generation.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_INVALID = 2 };
#define SHOWN_DIFFERENCES 20

typedef struct {
  const char *cluster, *workload, *policies, *compare;
  int json, per_job;
} sim_options;

static int usage(void) {
  fputs("usage: ffdl policy simulate --cluster CLUSTER.yml --workload TRACE.csv\n"
        "                            [--policies DIR] [--compare DIR2] [--json [--per-job]]\n",
        stderr);
  return EXIT_INVALID;
}

static int parse_options(int argc, char **argv, sim_options *o) {
  memset(o, 0, sizeof *o);
  for (int i = 0; i < argc; i++) {
    const char **slot = NULL;
    if (!strcmp(argv[i], "--json") || !strcmp(argv[i], "--per-job")) {
      *(argv[i][2] == 'j' ? &o->json : &o->per_job) = 1;
      continue;
    }
    if (!strcmp(argv[i], "--cluster")) slot = &o->cluster;
    if (!strcmp(argv[i], "--workload")) slot = &o->workload;
    if (!strcmp(argv[i], "--policies")) slot = &o->policies;
    if (!strcmp(argv[i], "--compare")) slot = &o->compare;
    if (!slot || i + 1 >= argc) {
      fprintf(stderr, "ffdl policy simulate: %s %s\n", argv[i],
              slot ? "needs a value" : "is not an option");
      return -1;
    }
    *slot = argv[++i];
  }
  if (!o->cluster || !o->workload) {
    fputs("ffdl policy simulate: --cluster and --workload are required\n", stderr);
    return -1;
  }
  if (!o->policies) o->policies = ffdl_paths_default_policies();
  return 0;
}

/* Simulates with the policies in DIR; NULL after printing the error. */
static json_t *run_with(const sim_options *o, const char *dir) {
  ffdl_generation_opts opts = {.policies_dir = dir, .lua_dir = ffdl_paths_lua_dir()};
  ffdl_generation *gen = NULL;
  char *err = NULL;
  json_t *result = NULL;
  if (ffdl_generation_load(&opts, &gen, &err) != FFDL_OK)
    fprintf(stderr, "ffdl policy simulate: cannot load the policies in %s: %s\n", dir, err);
  else if (ffdl_simulate(o->cluster, o->workload, gen, &result, &err) != FFDL_OK)
    fprintf(stderr, "%s\n", err);
  else
    json_object_set_new(result, "policies", json_string(dir));
  free(err);
  ffdl_generation_free(gen);
  return result;
}

/* json_equal, where two absent values are the same too. */
static int same_value(const json_t *a, const json_t *b) {
  return (!a && !b) || json_equal(a, b);
}

/* Jobs whose nodes or start order differ between two runs of one trace. */
static json_t *differences(json_t *a, json_t *b) {
  json_t *out = json_array(), *ja = json_object_get(a, "per_job"),
         *jb = json_object_get(b, "per_job");
  for (size_t i = 0; i < json_array_size(ja) && i < json_array_size(jb); i++) {
    json_t *x = json_array_get(ja, i), *y = json_array_get(jb, i);
    int placed = same_value(json_object_get(x, "nodes"), json_object_get(y, "nodes"));
    int ordered = same_value(json_object_get(x, "order"), json_object_get(y, "order"));
    if (placed && ordered) continue;
    json_t *d = json_pack("{s:O,s:O,s:s}", "row", json_object_get(x, "row"), "name",
                          json_object_get(x, "name"), "differs",
                          !placed && !ordered ? "placement and order"
                          : placed            ? "order"
                                              : "placement");
    const char *keys[] = {"status", "start_s", "order", "nodes"};
    json_t *sides[2] = {json_object(), json_object()};
    for (int k = 0; k < 4; k++) {
      json_t *vx = json_object_get(x, keys[k]), *vy = json_object_get(y, keys[k]);
      if (vx) json_object_set(sides[0], keys[k], vx);
      if (vy) json_object_set(sides[1], keys[k], vy);
    }
    json_object_set_new(d, "policies", sides[0]);
    json_object_set_new(d, "compare", sides[1]);
    json_array_append_new(out, d);
  }
  return out;
}

static void print_share(json_t *share) {
  const char *team;
  json_t *v;
  int first = 1;
  json_object_foreach(share, team, v) {
    printf("%s%s %.1f%%", first ? "" : ", ", team, 100 * json_real_value(v));
    first = 0;
  }
  if (first) printf("-");
}

static void print_figures(json_t *runs[], int nruns) {
  static const struct {
    const char *key, *label, *format;
  } rows[] = {{"jobs", "jobs", "%14.0f"},
              {"completed", "completed", "%14.0f"},
              {"never_fit", "never fit", "%14.0f"},
              {"unscheduled", "unscheduled", "%14.0f"},
              {"makespan_s", "makespan (s)", "%14.1f"},
              {"mean_queue_s", "mean queue (s)", "%14.1f"},
              {"p95_queue_s", "p95 queue (s)", "%14.1f"},
              {"mean_jct_s", "mean JCT (s)", "%14.1f"},
              {"gpu_utilization", "GPU utilization", "%14.3f"},
              {"cpu_utilization", "CPU utilization", "%14.3f"},
              {"placements_per_s", "placements/s", "%14.0f"}};
  printf("%-18s", "");
  for (int r = 0; r < nruns; r++)
    printf(" %14s", r ? "compare" : "policies");
  printf("\n");
  for (size_t k = 0; k < sizeof rows / sizeof rows[0]; k++) {
    printf("%-18s", rows[k].label);
    for (int r = 0; r < nruns; r++) {
      printf(" ");
      printf(rows[k].format, json_number_value(json_object_get(runs[r], rows[k].key)));
    }
    printf("\n");
  }
  for (int r = 0; r < nruns; r++) {
    printf("GPU share by team (%s): ", r ? "compare" : "policies");
    print_share(json_object_get(runs[r], "share_by_team"));
    printf("\n");
  }
}

/* Jobs that did not complete, with the reason the scheduler gave. */
static void print_unfinished(json_t *run) {
  size_t i, shown = 0;
  json_t *j;
  json_array_foreach(json_object_get(run, "per_job"), i, j) {
    const char *status = json_string_value(json_object_get(j, "status"));
    if (!strcmp(status, "completed")) continue;
    if (shown++ < SHOWN_DIFFERENCES)
      printf("  line %lld %s: %s: %s\n", (long long)json_integer_value(json_object_get(j, "row")),
             json_string_value(json_object_get(j, "name")), status,
             json_string_value(json_object_get(j, "reason")));
  }
  if (shown > SHOWN_DIFFERENCES) printf("  ... and %zu more\n", shown - SHOWN_DIFFERENCES);
}

static void print_differences(json_t *diffs) {
  printf("%zu job(s) placed or ordered differently\n", json_array_size(diffs));
  size_t i;
  json_t *d;
  json_array_foreach(diffs, i, d) {
    if (i == SHOWN_DIFFERENCES) {
      printf("  ... and %zu more (--json lists every one)\n", json_array_size(diffs) - i);
      break;
    }
    char *a = json_dumps(json_object_get(d, "policies"), JSON_COMPACT);
    char *b = json_dumps(json_object_get(d, "compare"), JSON_COMPACT);
    printf("  line %lld %s (%s): %s -> %s\n",
           (long long)json_integer_value(json_object_get(d, "row")),
           json_string_value(json_object_get(d, "name")),
           json_string_value(json_object_get(d, "differs")), a, b);
    free(a);
    free(b);
  }
}

int ffdl_cmd_simulate(int argc, char **argv) {
  sim_options o;
  if (parse_options(argc, argv, &o) != 0) return usage();
  json_t *runs[2] = {run_with(&o, o.policies), NULL};
  if (!runs[0]) return EXIT_INVALID;
  if (o.compare && !(runs[1] = run_with(&o, o.compare))) {
    json_decref(runs[0]);
    return EXIT_INVALID;
  }
  json_t *diffs = runs[1] ? differences(runs[0], runs[1]) : NULL;
  if (o.json) {
    json_t *out = json_deep_copy(runs[0]);
    if (!o.per_job) json_object_del(out, "per_job");
    json_t *jobs = json_array();
    size_t i;
    json_t *j;
    json_array_foreach(json_object_get(runs[0], "per_job"), i, j) {
      const char *status = json_string_value(json_object_get(j, "status"));
      if (strcmp(status, "completed") != 0) json_array_append(jobs, j);
    }
    json_object_set_new(out, "not_completed", jobs);
    if (runs[1]) {
      json_t *other = json_deep_copy(runs[1]);
      json_object_del(other, "per_job");
      json_object_set_new(out, "compare", other);
      json_object_set(out, "differences", diffs);
    }
    json_dumpf(out, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
    printf("\n");
    json_decref(out);
  } else {
    print_figures(runs, runs[1] ? 2 : 1);
    for (int r = 0; r < (runs[1] ? 2 : 1); r++)
      if (json_integer_value(json_object_get(runs[r], "completed")) <
          json_integer_value(json_object_get(runs[r], "jobs"))) {
        printf("not completed (%s):\n", r ? "compare" : "policies");
        print_unfinished(runs[r]);
      }
    if (diffs) print_differences(diffs);
  }
  json_decref(diffs);
  json_decref(runs[0]);
  json_decref(runs[1]);
  return EXIT_OK;
}
