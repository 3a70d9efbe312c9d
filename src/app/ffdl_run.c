/*
 * ffdl_run.c: `ffdl-run FILE`: runs one manifest or job script to the end on
 * this machine (the embedded default). Exit status: 0 COMPLETED, 1 FAILED,
 * 2 bad input, 130 HALTED.
 * Owns: arguments, the run's exit status, the final summary. Must not:
 * schedule or supervise (the orchestrator does).
 */
#include "app/remote.h"
#include "app/runtime.h"
#include "app/script.h"
#include "app/ui.h"
#include "core/error.h"
#include "core/log.h"
#include "policy/limits.h"
#include "policy/spec.h"

#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { EXIT_COMPLETED = 0, EXIT_FAILED = 1, EXIT_BAD_INPUT = 2, EXIT_HALTED = 130 };

typedef struct {
  const char *file;
  const char *policies;
  const char *model;
  const char *server;
  const char *policy_limits; /* JSON, or NULL */
  int quiet;
} options;

static void usage(FILE *out) {
  fputs("usage: ffdl-run [--server URL] [--policies DIR] [--policy-limits JSON] [--model DIR]\n"
        "                [--quiet] FILE\n"
        "\n"
        "Runs one job to the end on this machine and shows its progress.\n"
        "FILE is an FfDL manifest (.yml, .yaml, .json) or a Lua job script (.lua).\n"
        "--server URL  run on an ffdl-server (token from FFDL_TOKEN) instead of here\n"
        "--model DIR   the model code (default: the manifest's model field)\n"
        "--policies DIR  the policy directory (default: ./policies)\n"
        "--policy-limits JSON  limits of policy calls, as ffdl-server's policy_limits:\n"
        "              '{\"memory_mb\": 64, \"deadline_ms\": {\"place\": 50, \"admit\": 200}}'\n"
        "exit status: 0 COMPLETED, 1 FAILED, 2 bad input, 130 HALTED\n",
        out);
}

static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) return usage(stdout), -1;
    if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0)
      o->quiet = 1;
    else if (strcmp(a, "--policies") == 0 && i + 1 < argc)
      o->policies = argv[++i];
    else if (strcmp(a, "--policy-limits") == 0 && i + 1 < argc)
      o->policy_limits = argv[++i];
    else if (strcmp(a, "--model") == 0 && i + 1 < argc)
      o->model = argv[++i];
    else if (strcmp(a, "--server") == 0 && i + 1 < argc)
      o->server = argv[++i];
    else if (a[0] == '-') {
      fprintf(stderr, "ffdl-run: unknown option %s\n", a);
      return usage(stderr), -2;
    } else if (!o->file)
      o->file = a;
    else {
      fprintf(stderr, "ffdl-run: one file at a time (got %s and %s)\n", o->file, a);
      return -2;
    }
  }
  if (!o->file) return usage(stderr), -2;
  return 0;
}

typedef struct {
  ffdl_ui ui;
  ffdl_runtime *rt;
  ffdl_remote *remote;
  char id[64];
  char final_buf[16];
  const char *final_status; /* final_buf once set */
  int interrupted;
} manifest_run;

static void on_transition(void *ud, const char *id, const char *status, const char *reason,
                          const char *code) {
  ffdl_ui_transition(&((manifest_run *)ud)->ui, id, status, reason, code);
}
static void on_waiting(void *ud, const char *id, const char *reason) {
  ffdl_ui_waiting(&((manifest_run *)ud)->ui, id, reason);
}
static void on_line(void *ud, const char *id, int learner, const char *line, size_t len) {
  ffdl_ui_line(&((manifest_run *)ud)->ui, id, learner, line, len);
}
static void on_metric(void *ud, const char *id, const json_t *record) {
  ffdl_ui_metric(&((manifest_run *)ud)->ui, id, record);
}
static void on_end(void *ud, const char *id, const char *status) {
  (void)id;
  manifest_run *run = ud;
  snprintf(run->final_buf, sizeof run->final_buf, "%s", status);
  run->final_status = run->final_buf;
}
static void on_progress(void *ud, const char *id, const char *what, uint64_t done, uint64_t total,
                        int state) {
  ffdl_ui_progress(&((manifest_run *)ud)->ui, id, what, done, total, state);
}
static const ffdl_orch_observer manifest_observer = {on_transition, on_waiting, on_line,
                                                     on_metric,     on_end,     on_progress};

static void on_signal(uv_signal_t *h, int signum) {
  manifest_run *run = h->data;
  if (run->interrupted++) return;
  fprintf(stderr, "\nffdl-run: %s: halting %s\n", signum == SIGINT ? "interrupted" : "terminated",
          run->id);
  ffdl_orch_halt_all(run->rt->orch,
                     signum == SIGINT ? "interrupted (Ctrl-C)" : "terminated (SIGTERM)");
}

/* A path relative to the current directory when it is below it. */
static const char *shown_path(const char *path) {
  char cwd[4096];
  size_t n;
  if (getcwd(cwd, sizeof cwd) && (n = strlen(cwd)) && strncmp(path, cwd, n) == 0 && path[n] == '/')
    return path + n + 1;
  return path;
}

static int summarize(manifest_run *run) {
  const char *status =
      run->final_status ? run->final_status : ffdl_orch_status(run->rt->orch, run->id);
  const char *dir = ffdl_orch_results_dir(run->rt->orch, run->id);
  if (status && strcmp(status, "COMPLETED") == 0) {
    char *url = ffdl_orch_results_url(run->rt->orch, run->id);
    fprintf(stderr, "ffdl-run: %s COMPLETED; results in %s%s%s\n", run->id, url ? url : "",
            url ? " and " : "", shown_path(dir));
    free(url);
    return EXIT_COMPLETED;
  }
  if (status && strcmp(status, "HALTED") == 0) {
    fprintf(stderr, "ffdl-run: %s HALTED; logs in %s\n", run->id, shown_path(dir));
    return EXIT_HALTED;
  }
  fprintf(stderr, "ffdl-run: %s %s; logs in %s\n", run->id, status ? status : "did not finish",
          shown_path(dir));
  return EXIT_FAILED;
}

static int run_manifest(ffdl_runtime *rt, const options *o, manifest_run *run) {
  ffdl_diags diags = {0};
  json_t *spec = NULL;
  int rc = ffdl_spec_check_file(rt->gen, o->file, &diags, &spec);
  ffdl_diags_print(&diags, o->file, stderr);
  ffdl_diags_free(&diags);
  if (rc != 0 || !spec) {
    json_decref(spec);
    return EXIT_BAD_INPUT;
  }
  char *manifest_dir = strdup(o->file);
  const char *model = o->model ? o->model : json_string_value(json_object_get(spec, "model"));
  if (!model) model = dirname(manifest_dir); /* FfDL's habit: the code sits beside the manifest */
  char *err = NULL;
  rc = ffdl_orch_submit(rt->orch, spec, model, run->id, &err);
  json_decref(spec);
  free(manifest_dir);
  if (rc != 0) {
    fprintf(stderr, "ffdl-run: %s: %s\n", o->file, err ? err : ffdl_strerror(rc));
    free(err);
    return EXIT_BAD_INPUT;
  }
  uv_signal_t sigint, sigterm;
  uv_signal_init(rt->loop, &sigint);
  uv_signal_init(rt->loop, &sigterm);
  sigint.data = sigterm.data = run;
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_unref((uv_handle_t *)&sigint);
  uv_unref((uv_handle_t *)&sigterm);
  uv_run(rt->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&sigint, NULL);
  uv_close((uv_handle_t *)&sigterm, NULL);
  uv_run(rt->loop, UV_RUN_NOWAIT);
  return summarize(run);
}

static void on_remote_signal(uv_signal_t *h, int signum) {
  manifest_run *run = h->data;
  if (run->interrupted++) return;
  fprintf(stderr, "\nffdl-run: %s: halting %s on the server\n",
          signum == SIGINT ? "interrupted" : "terminated", run->id);
  ffdl_remote_halt_all(run->remote);
}

/* --server: the manifest is checked here, then runs on the server. */
static int run_remote(ffdl_runtime *rt, const options *o, manifest_run *run) {
  ffdl_diags diags = {0};
  json_t *spec = NULL;
  int rc = ffdl_spec_check_file(rt->gen, o->file, &diags, &spec);
  ffdl_diags_print(&diags, o->file, stderr);
  ffdl_diags_free(&diags);
  if (rc != 0 || !spec) return json_decref(spec), EXIT_BAD_INPUT;
  char *manifest_dir = strdup(o->file);
  const char *model = o->model ? o->model : json_string_value(json_object_get(spec, "model"));
  if (!model) model = dirname(manifest_dir);
  char *err = NULL;
  ffdl_remote_new(rt->loop, &manifest_observer, run, &run->remote);
  rc = ffdl_remote_submit_spec(run->remote, spec, model, run->id, &err);
  json_decref(spec);
  free(manifest_dir);
  if (rc != 0) {
    fprintf(stderr, "ffdl-run: %s: %s\n", o->file, err ? err : "the server refused the job");
    free(err);
    ffdl_remote_free(run->remote);
    uv_run(rt->loop, UV_RUN_NOWAIT);
    return EXIT_BAD_INPUT;
  }
  fprintf(stderr, "ffdl-run: %s submitted to %s\n", run->id, o->server);
  uv_signal_t sigint, sigterm;
  uv_signal_init(rt->loop, &sigint);
  uv_signal_init(rt->loop, &sigterm);
  sigint.data = sigterm.data = run;
  uv_signal_start(&sigint, on_remote_signal, SIGINT);
  uv_signal_start(&sigterm, on_remote_signal, SIGTERM);
  uv_unref((uv_handle_t *)&sigint);
  uv_unref((uv_handle_t *)&sigterm);
  uv_run(rt->loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&sigint, NULL);
  uv_close((uv_handle_t *)&sigterm, NULL);
  ffdl_remote_free(run->remote);
  uv_run(rt->loop, UV_RUN_NOWAIT);
  const char *status = run->final_status ? run->final_status : "FAILED";
  fprintf(stderr, "ffdl-run: %s %s on %s\n", run->id, status, o->server);
  return !strcmp(status, "COMPLETED") ? EXIT_COMPLETED
         : !strcmp(status, "HALTED")  ? EXIT_HALTED
                                      : EXIT_FAILED;
}

/* --policy-limits: the defaults of every policy sandbox of this run. */
static int set_policy_limits(const char *text) {
  json_error_t jerr;
  json_t *config = json_loads(text, JSON_DECODE_ANY, &jerr);
  if (!config) {
    fprintf(stderr, "ffdl-run: --policy-limits: column %d: %s\n", jerr.column, jerr.text);
    return -1;
  }
  ffdl_sandbox_limits limits = {0};
  char *field = NULL, *err = NULL;
  int rc = ffdl_policy_limits_from_json(config, "policy_limits", &limits, &field, &err);
  json_decref(config);
  if (rc != FFDL_OK)
    fprintf(stderr, "ffdl-run: --policy-limits: %s: %s\n", field ? field : "policy_limits",
            err ? err : ffdl_strerror(rc));
  else
    ffdl_sandbox_set_defaults(&limits);
  free(field);
  free(err);
  return rc == FFDL_OK ? 0 : -1;
}

static int is_lua(const char *file) {
  size_t n = strlen(file);
  return n > 4 && strcmp(file + n - 4, ".lua") == 0;
}

int main(int argc, char **argv) {
  ffdl_log_init();
  signal(SIGPIPE, SIG_IGN);
  options o;
  int rc = parse_args(argc, argv, &o);
  if (rc < 0) return rc == -1 ? 0 : EXIT_BAD_INPUT;
  if (o.policy_limits && set_policy_limits(o.policy_limits) != 0) return EXIT_BAD_INPUT;
  if (o.server) setenv("FFDL_URL", o.server, 1); /* the client reads it; FFDL_TOKEN too */
  if (access(o.file, R_OK) != 0) {
    fprintf(stderr, "ffdl-run: %s: cannot read the file\n", o.file);
    return EXIT_BAD_INPUT;
  }
  manifest_run run = {.ui = {.show_lines = 1, .quiet = o.quiet}};
  ffdl_runtime rt;
  char *err = NULL;
  if (ffdl_runtime_open(&rt, o.policies, &manifest_observer, &run, &err) != 0) {
    fprintf(stderr, "ffdl-run: %s\n", err ? err : "cannot start");
    free(err);
    ffdl_runtime_close(&rt);
    return EXIT_BAD_INPUT;
  }
  run.rt = &rt;
  int spec_table = 0;
  if (is_lua(o.file)) {
    ffdl_ui script_ui = {.show_lines = 0, .prefix_ids = 1, .quiet = o.quiet};
    rc = ffdl_script_run(&rt, &script_ui, o.file, o.server != NULL, &spec_table);
    if (spec_table) ffdl_orch_set_observer(rt.orch, &manifest_observer, &run);
  }
  if (!is_lua(o.file) || spec_table)
    rc = o.server ? run_remote(&rt, &o, &run) : run_manifest(&rt, &o, &run);
  ffdl_runtime_close(&rt);
  return rc;
}
