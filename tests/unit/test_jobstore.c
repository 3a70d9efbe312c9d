/* The job store through its C interface, on real SQLite files. */
#define _GNU_SOURCE /* nftw */
#include "core/error.h"
#include "runner.h"
#include "store/jobstore.h"

#include <ftw.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Each case runs in its own process with its own directory, removed at exit
 * (CHECK exits too). */
static char tmp_root[256];

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  return remove(path);
}

static void remove_tmp_root(void) {
  if (tmp_root[0]) nftw(tmp_root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A store path under directories that do not exist yet (static buffer). */
static const char *store_path(void) {
  static char path[512];
  const char *tmp = getenv("TMPDIR");
  snprintf(tmp_root, sizeof tmp_root, "%s/ffdl-jobstore-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  CHECK(mkdtemp(tmp_root) != NULL);
  atexit(remove_tmp_root);
  snprintf(path, sizeof path, "%s/state/nested/jobs.db", tmp_root);
  return path;
}

static ffdl_jobstore *open_store(const char *path) {
  ffdl_jobstore *st = NULL;
  char *err = NULL;
  int rc = ffdl_jobstore_open(path, &st, &err);
  if (rc) fprintf(stderr, "%s\n", err);
  CHECK(rc == FFDL_OK);
  CHECK(err == NULL);
  return st;
}

static json_t *sample_spec(void) {
  return json_pack("{s:s, s:s, s:s, s:{s:s, s:s}, s:[{s:{s:s}}]}", "name", "mnist", "user", "ann",
                   "team", "vision", "framework", "name", "pytorch", "version", "2.1",
                   "data_stores", "connection", "password", "hunter2");
}

static const char *str_at(const json_t *obj, const char *key) {
  return json_string_value(json_object_get(obj, key));
}

static json_int_t int_at(const json_t *obj, const char *key) {
  const json_t *v = json_object_get(obj, key);
  CHECK(json_is_integer(v));
  return json_integer_value(v);
}

static int is_null_at(const json_t *obj, const char *key) {
  return json_is_null(json_object_get(obj, key));
}

/* Job "j1": queued at 1000, running at 2000, one learner that completes,
 * two metrics, an extra value, completed at 5000. */
static void fill_job(ffdl_jobstore *st) {
  json_t *spec = sample_spec();
  CHECK(ffdl_jobstore_create(st, "j1", spec, 1000) == FFDL_OK);
  json_decref(spec);
  CHECK(ffdl_jobstore_transition(st, "j1", "RUNNING", "started", NULL, 2000) == FFDL_OK);
  CHECK(ffdl_jobstore_learner(st, "j1", 1, 1, 4242, "RUNNING", -1, 0, 2100) == FFDL_OK);
  json_t *m1 = json_pack("{s:i, s:f}", "step", 1, "loss", 0.5);
  json_t *m2 = json_pack("{s:i, s:f}", "step", 2, "loss", 0.25);
  CHECK(ffdl_jobstore_add_metric(st, "j1", m1) == FFDL_OK);
  CHECK(ffdl_jobstore_add_metric(st, "j1", m2) == FFDL_OK);
  json_decref(m1);
  json_decref(m2);
  CHECK(ffdl_jobstore_learner(st, "j1", 1, 1, 4242, "COMPLETED", 0, 0, 4900) == FFDL_OK);
  json_t *dir = json_string("/results/j1");
  CHECK(ffdl_jobstore_set_extra(st, "j1", "results_dir", dir) == FFDL_OK);
  json_decref(dir);
  CHECK(ffdl_jobstore_transition(st, "j1", "COMPLETED", "exit 0", NULL, 5000) == FFDL_OK);
}

static void check_job_row(const json_t *job) {
  CHECK(strcmp(str_at(job, "id"), "j1") == 0);
  CHECK(strcmp(str_at(job, "name"), "mnist") == 0);
  CHECK(strcmp(str_at(job, "user"), "ann") == 0);
  CHECK(strcmp(str_at(job, "team"), "vision") == 0);
  CHECK(strcmp(str_at(job, "framework"), "pytorch") == 0);
  CHECK(strcmp(str_at(job, "status"), "COMPLETED") == 0);
  CHECK(strcmp(str_at(job, "status_message"), "exit 0") == 0);
  CHECK(is_null_at(job, "error_code"));
  CHECK(int_at(job, "submitted_ms") == 1000);
  CHECK(int_at(job, "completed_ms") == 5000);
  /* The spec comes back as JSON, secrets kept. */
  const json_t *spec = json_object_get(job, "spec");
  CHECK(json_is_object(spec));
  json_t *expected = sample_spec();
  CHECK(json_equal(spec, expected));
  json_decref(expected);
  CHECK(strcmp(str_at(json_object_get(job, "extra"), "results_dir"), "/results/j1") == 0);
}

static void check_job_children(const json_t *job) {
  const json_t *tr = json_object_get(job, "transitions");
  CHECK(json_array_size(tr) == 3);
  static const char *const statuses[] = {"QUEUED", "RUNNING", "COMPLETED"};
  static const json_int_t times[] = {1000, 2000, 5000};
  for (size_t i = 0; i < 3; i++) {
    CHECK(strcmp(str_at(json_array_get(tr, i), "status"), statuses[i]) == 0);
    CHECK(int_at(json_array_get(tr, i), "time_ms") == times[i]);
  }
  CHECK(is_null_at(json_array_get(tr, 0), "reason"));
  CHECK(strcmp(str_at(json_array_get(tr, 1), "reason"), "started") == 0);

  const json_t *learners = json_object_get(job, "learners");
  CHECK(json_array_size(learners) == 1);
  const json_t *l = json_array_get(learners, 0);
  CHECK(int_at(l, "learner") == 1 && int_at(l, "attempt") == 1 && int_at(l, "pid") == 4242);
  CHECK(strcmp(str_at(l, "status"), "COMPLETED") == 0);
  CHECK(int_at(l, "exit_code") == 0 && int_at(l, "signal") == 0);
  CHECK(int_at(l, "started_ms") == 2100); /* kept from the first insert */
  CHECK(int_at(l, "ended_ms") == 4900);

  const json_t *metrics = json_object_get(job, "metrics");
  CHECK(json_array_size(metrics) == 2);
  CHECK(int_at(json_array_get(metrics, 0), "step") == 1);
  CHECK(int_at(json_array_get(metrics, 1), "step") == 2);
}

static void round_trip(void) {
  ffdl_jobstore *st = open_store(store_path());
  fill_job(st);
  json_t *job = ffdl_jobstore_get(st, "j1");
  CHECK(job != NULL);
  check_job_row(job);
  check_job_children(job);
  json_decref(job);
  ffdl_jobstore_close(st);
}

static void running_learner_has_no_end(void) {
  ffdl_jobstore *st = open_store(store_path());
  json_t *spec = json_object();
  CHECK(ffdl_jobstore_create(st, "j", spec, 10) == FFDL_OK);
  json_decref(spec);
  CHECK(ffdl_jobstore_learner(st, "j", 2, 1, 99, "RUNNING", -1, 0, 20) == FFDL_OK);
  CHECK(ffdl_jobstore_learner(st, "j", 2, 2, 100, "FAILED", 137, 9, 30) == FFDL_OK);
  json_t *job = ffdl_jobstore_get(st, "j");
  const json_t *learners = json_object_get(job, "learners");
  CHECK(json_array_size(learners) == 2);
  CHECK(is_null_at(json_array_get(learners, 0), "ended_ms"));
  CHECK(int_at(json_array_get(learners, 1), "ended_ms") == 30);
  CHECK(int_at(json_array_get(learners, 1), "signal") == 9);
  /* Absent spec fields are null; a running job has no completion time. */
  CHECK(is_null_at(job, "name") && is_null_at(job, "framework") && is_null_at(job, "user"));
  CHECK(is_null_at(job, "completed_ms"));
  CHECK(json_object_size(json_object_get(job, "extra")) == 0);
  json_decref(job);
  ffdl_jobstore_close(st);
}

static void list_is_newest_first(void) {
  ffdl_jobstore *st = open_store(store_path());
  json_t *list = ffdl_jobstore_list(st);
  CHECK(json_is_array(list) && json_array_size(list) == 0);
  json_decref(list);
  fill_job(st);
  json_t *spec = json_pack("{s:{s:s}}", "framework", "name", "tensorflow");
  CHECK(ffdl_jobstore_create(st, "j2", spec, 3000) == FFDL_OK);
  json_decref(spec);
  list = ffdl_jobstore_list(st);
  CHECK(json_array_size(list) == 2);
  const json_t *newest = json_array_get(list, 0), *oldest = json_array_get(list, 1);
  CHECK(strcmp(str_at(newest, "id"), "j2") == 0);
  CHECK(strcmp(str_at(newest, "framework"), "tensorflow") == 0);
  CHECK(strcmp(str_at(newest, "status"), "QUEUED") == 0);
  CHECK(is_null_at(newest, "name") && is_null_at(newest, "completed_ms"));
  CHECK(int_at(newest, "submitted_ms") == 3000);
  CHECK(strcmp(str_at(oldest, "id"), "j1") == 0);
  CHECK(int_at(oldest, "completed_ms") == 5000);
  CHECK(json_object_get(oldest, "spec") == NULL);
  CHECK(json_object_get(oldest, "transitions") == NULL);
  json_decref(list);
  ffdl_jobstore_close(st);
}

static void unknown_job_is_enoent(void) {
  ffdl_jobstore *st = open_store(store_path());
  CHECK(ffdl_jobstore_transition(st, "nope", "RUNNING", NULL, NULL, 1) == FFDL_ENOENT);
  CHECK(ffdl_jobstore_learner(st, "nope", 1, 1, 1, "RUNNING", -1, 0, 1) == FFDL_ENOENT);
  json_t *rec = json_pack("{s:i}", "step", 1);
  CHECK(ffdl_jobstore_add_metric(st, "nope", rec) == FFDL_ENOENT);
  CHECK(ffdl_jobstore_set_extra(st, "nope", "k", rec) == FFDL_ENOENT);
  json_decref(rec);
  CHECK(ffdl_jobstore_get(st, "nope") == NULL);
  /* The failed transaction left the store usable. */
  json_t *spec = json_object();
  CHECK(ffdl_jobstore_create(st, "j", spec, 1) == FFDL_OK);
  CHECK(ffdl_jobstore_create(st, "j", spec, 2) == FFDL_EINVALID); /* duplicate id */
  json_decref(spec);
  CHECK(ffdl_jobstore_transition(st, "j", "FAILED", "oom", "E_OOM", 3) == FFDL_OK);
  json_t *job = ffdl_jobstore_get(st, "j");
  CHECK(strcmp(str_at(job, "error_code"), "E_OOM") == 0);
  CHECK(json_array_size(json_object_get(job, "transitions")) == 2);
  json_decref(job);
  ffdl_jobstore_close(st);
}

static void reopen_keeps_everything(void) {
  const char *path = store_path();
  ffdl_jobstore *st = open_store(path);
  fill_job(st);
  json_t *before = ffdl_jobstore_get(st, "j1");
  ffdl_jobstore_close(st);
  st = open_store(path);
  json_t *after = ffdl_jobstore_get(st, "j1");
  CHECK(before && after && json_equal(before, after));
  check_job_row(after);
  check_job_children(after);
  json_decref(before);
  json_decref(after);
  ffdl_jobstore_close(st);
}

static void file_is_private_and_in_wal_mode(void) {
  const char *path = store_path();
  ffdl_jobstore *st = open_store(path);
  struct stat sb;
  CHECK(stat(path, &sb) == 0);
  CHECK((sb.st_mode & 0777) == 0600);
  sqlite3 *db;
  CHECK(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
  sqlite3_stmt *s;
  CHECK(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, NULL) == SQLITE_OK);
  CHECK(sqlite3_step(s) == SQLITE_ROW);
  CHECK(strcmp((const char *)sqlite3_column_text(s, 0), "wal") == 0);
  sqlite3_finalize(s);
  sqlite3_close(db);
  ffdl_jobstore_close(st);
}

static void newer_schema_is_refused(void) {
  const char *path = store_path();
  ffdl_jobstore_close(open_store(path));
  sqlite3 *db;
  CHECK(sqlite3_open(path, &db) == SQLITE_OK);
  CHECK(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL) == SQLITE_OK);
  sqlite3_close(db);
  ffdl_jobstore *st = NULL;
  char *err = NULL;
  CHECK(ffdl_jobstore_open(path, &st, &err) == FFDL_EINVALID);
  CHECK(st == NULL);
  CHECK_CONTAINS(err, "schema version 99");
  free(err);
}

static void open_reports_what_failed(void) {
  char blocker[300], path[400]; /* sized from tmp_root's 256 */
  store_path();                 /* makes tmp_root */
  snprintf(blocker, sizeof blocker, "%s/not-a-dir", tmp_root);
  FILE *f = fopen(blocker, "w");
  CHECK(f != NULL);
  fclose(f);
  snprintf(path, sizeof path, "%s/jobs.db", blocker);
  ffdl_jobstore *st = NULL;
  char *err = NULL;
  CHECK(ffdl_jobstore_open(path, &st, &err) == FFDL_EIO);
  CHECK(st == NULL);
  CHECK_CONTAINS(err, path);
  CHECK_CONTAINS(err, "Not a directory");
  free(err);
  /* A file that is not a database. */
  snprintf(path, sizeof path, "%s/garbage.db", tmp_root);
  f = fopen(path, "w");
  CHECK(f != NULL);
  fputs("this is not an SQLite database, not even close to one; padding padding padding", f);
  fclose(f);
  CHECK(ffdl_jobstore_open(path, &st, &err) == FFDL_EIO);
  CHECK_CONTAINS(err, "not a database");
  free(err);
}

static void two_handles_share_the_file(void) {
  const char *path = store_path();
  ffdl_jobstore *writer = open_store(path), *reader = open_store(path);
  json_t *spec = json_pack("{s:s}", "name", "shared");
  CHECK(ffdl_jobstore_create(writer, "j", spec, 1) == FFDL_OK);
  json_decref(spec);
  json_t *job = ffdl_jobstore_get(reader, "j");
  CHECK(job && strcmp(str_at(job, "status"), "QUEUED") == 0);
  json_decref(job);
  CHECK(ffdl_jobstore_transition(writer, "j", "RUNNING", NULL, NULL, 2) == FFDL_OK);
  job = ffdl_jobstore_get(reader, "j");
  CHECK(strcmp(str_at(job, "status"), "RUNNING") == 0);
  json_decref(job);
  /* And the other way round. */
  CHECK(ffdl_jobstore_transition(reader, "j", "HALTED", "user", NULL, 3) == FFDL_OK);
  json_t *list = ffdl_jobstore_list(writer);
  CHECK(strcmp(str_at(json_array_get(list, 0), "status"), "HALTED") == 0);
  json_decref(list);
  ffdl_jobstore_close(reader);
  ffdl_jobstore_close(writer);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"round_trip", round_trip},
      {"running_learner_has_no_end", running_learner_has_no_end},
      {"list_is_newest_first", list_is_newest_first},
      {"unknown_job_is_enoent", unknown_job_is_enoent},
      {"reopen_keeps_everything", reopen_keeps_everything},
      {"file_is_private_and_in_wal_mode", file_is_private_and_in_wal_mode},
      {"newer_schema_is_refused", newer_schema_is_refused},
      {"open_reports_what_failed", open_reports_what_failed},
      {"two_handles_share_the_file", two_handles_share_the_file},
      {NULL, NULL}};
  return run_tests(cases, argc, argv);
}
