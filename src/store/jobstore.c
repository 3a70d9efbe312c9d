/*
 * jobstore.c: the job store, one SQLite file in WAL mode (jobs, their
 * transitions, learners and metrics).
 * Owns: the schema and its version, the cached prepared statements, and
 * the rule that every state change is one transaction (one exception: a
 * whole queue halted at once, ffdl_jobstore_transition_many).
 * Must not: decide which transitions are legal (the orchestrator does),
 * redact specs (the file is the platform's own, mode 0600), or hold a read
 * transaction open between calls (other handles on the file must see changes).
 */
#include "store/jobstore.h"
#include "core/error.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SCHEMA_VERSION 2
#define BUSY_TIMEOUT_MS 5000

static const char SCHEMA_V1[] =
    "CREATE TABLE jobs ("
    "  id TEXT PRIMARY KEY NOT NULL, name TEXT, user TEXT, team TEXT, framework TEXT,"
    "  status TEXT NOT NULL, error_code TEXT, status_message TEXT,"
    "  submitted_ms INTEGER NOT NULL, completed_ms INTEGER,"
    "  spec_json TEXT NOT NULL, extra_json TEXT NOT NULL DEFAULT '{}');"
    "CREATE INDEX jobs_by_submitted ON jobs(submitted_ms);"
    "CREATE TABLE transitions ("
    "  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, seq INTEGER NOT NULL,"
    "  status TEXT NOT NULL, time_ms INTEGER NOT NULL, reason TEXT, error_code TEXT,"
    "  PRIMARY KEY (job_id, seq));"
    "CREATE TABLE learners ("
    "  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,"
    "  learner INTEGER NOT NULL, attempt INTEGER NOT NULL, pid INTEGER,"
    "  status TEXT NOT NULL, exit_code INTEGER, signal INTEGER,"
    "  started_ms INTEGER NOT NULL, ended_ms INTEGER,"
    "  UNIQUE (job_id, learner, attempt));"
    "CREATE TABLE metrics ("
    "  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, seq INTEGER NOT NULL,"
    "  record_json TEXT NOT NULL, PRIMARY KEY (job_id, seq));";

/* Version 2: the policy decision log behind `ffdl explain`. */
static const char SCHEMA_V2[] =
    "CREATE TABLE decisions ("
    "  job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, seq INTEGER NOT NULL,"
    "  decision_json TEXT NOT NULL, PRIMARY KEY (job_id, seq));";

enum {
  SQL_BEGIN_READ,
  SQL_BEGIN_WRITE,
  SQL_COMMIT,
  SQL_ROLLBACK,
  SQL_INSERT_JOB,
  SQL_UPDATE_STATUS,
  SQL_INSERT_TRANSITION,
  SQL_UPSERT_LEARNER,
  SQL_INSERT_METRIC,
  SQL_SELECT_EXTRA,
  SQL_UPDATE_EXTRA,
  SQL_SELECT_JOB,
  SQL_SELECT_TRANSITIONS,
  SQL_SELECT_LEARNERS,
  SQL_SELECT_METRICS,
  SQL_LIST_JOBS,
  SQL_COUNT
};

/* Column names of the SELECTs are the JSON keys of ffdl_jobstore_get/list. */
static const char *const statement_sql[SQL_COUNT] = {
    [SQL_BEGIN_READ] = "BEGIN",
    [SQL_BEGIN_WRITE] = "BEGIN IMMEDIATE",
    [SQL_COMMIT] = "COMMIT",
    [SQL_ROLLBACK] = "ROLLBACK",
    [SQL_INSERT_JOB] = "INSERT INTO jobs (id, name, user, team, framework, status, submitted_ms,"
                       " spec_json) VALUES (?1, ?2, ?3, ?4, ?5, 'QUEUED', ?6, ?7)",
    /* ?4: whether the status is terminal. Leaving a terminal state (a retry)
     * clears the completion time again. */
    [SQL_UPDATE_STATUS] = "UPDATE jobs SET status = ?2, error_code = ?3, status_message = ?5,"
                          " completed_ms = CASE WHEN ?4 THEN ?6 ELSE NULL END WHERE id = ?1",
    [SQL_INSERT_TRANSITION] =
        "INSERT INTO transitions (job_id, seq, status, time_ms, reason, error_code)"
        " VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM transitions WHERE job_id = ?1),"
        " ?2, ?3, ?4, ?5)",
    /* The first end time wins; back to RUNNING clears it. */
    [SQL_UPSERT_LEARNER] =
        "INSERT INTO learners (job_id, learner, attempt, pid, status, exit_code, signal,"
        " started_ms, ended_ms)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE WHEN ?5 = 'RUNNING' THEN NULL ELSE ?8 END)"
        " ON CONFLICT (job_id, learner, attempt) DO UPDATE SET pid = excluded.pid,"
        " status = excluded.status, exit_code = excluded.exit_code, signal = excluded.signal,"
        " ended_ms = CASE WHEN excluded.ended_ms IS NULL THEN NULL"
        " ELSE COALESCE(ended_ms, excluded.ended_ms) END",
    [SQL_INSERT_METRIC] =
        "INSERT INTO metrics (job_id, seq, record_json)"
        " VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM metrics WHERE job_id = ?1), ?2)",
    [SQL_SELECT_EXTRA] = "SELECT extra_json FROM jobs WHERE id = ?1",
    [SQL_UPDATE_EXTRA] = "UPDATE jobs SET extra_json = ?2 WHERE id = ?1",
    [SQL_SELECT_JOB] = "SELECT id, name, user, team, framework, status, error_code,"
                       " status_message, submitted_ms, completed_ms, spec_json, extra_json"
                       " FROM jobs WHERE id = ?1",
    [SQL_SELECT_TRANSITIONS] = "SELECT status, time_ms, reason, error_code FROM transitions"
                               " WHERE job_id = ?1 ORDER BY seq",
    [SQL_SELECT_LEARNERS] = "SELECT learner, attempt, pid, status, exit_code, signal,"
                            " started_ms, ended_ms FROM learners WHERE job_id = ?1"
                            " ORDER BY learner, attempt",
    [SQL_SELECT_METRICS] = "SELECT record_json FROM metrics WHERE job_id = ?1 ORDER BY seq",
    [SQL_LIST_JOBS] = "SELECT id, name, user, framework, status, submitted_ms, completed_ms,"
                      " error_code FROM jobs ORDER BY submitted_ms DESC, rowid DESC",
};

/* Columns of SQL_SELECT_JOB before spec_json and extra_json. */
#define JOB_PLAIN_COLUMNS 10

struct ffdl_jobstore {
  sqlite3 *db;
  char *path;
  sqlite3_stmt *stmts[SQL_COUNT];
  char last_error[256]; /* the SQLite message of the last failure, for open's *err */
};

/* ---- errors ------------------------------------------------------------ */

static int code_from_sqlite(int rc) {
  if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) return FFDL_ENOENT; /* no such job */
  switch (rc & 0xff) {
  case SQLITE_CONSTRAINT:
    return FFDL_EINVALID;
  case SQLITE_NOMEM:
    return FFDL_ENOMEM;
  case SQLITE_BUSY:
  case SQLITE_LOCKED:
    return FFDL_ETIMEOUT;
  case SQLITE_TOOBIG:
    return FFDL_ETOOBIG;
  default:
    return FFDL_EIO;
  }
}

/* Logs the last SQLite error of ST and returns it as an FFDL_E* code. */
static int sqlite_failure(ffdl_jobstore *st, const char *what) {
  int rc = sqlite3_extended_errcode(st->db);
  ffdl_log_level level = (rc & 0xff) == SQLITE_CONSTRAINT ? FFDL_LOG_WARN : FFDL_LOG_ERROR;
  snprintf(st->last_error, sizeof st->last_error, "%s: %s", what, sqlite3_errmsg(st->db));
  ffdl_log(level, "jobstore %s: %s", st->path, st->last_error);
  return code_from_sqlite(rc);
}

static void set_error(char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(char **err, const char *fmt, ...) {
  if (!err) return;
  va_list ap, again;
  va_start(ap, fmt);
  va_copy(again, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  *err = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (*err) vsnprintf(*err, (size_t)n + 1, fmt, again);
  va_end(again);
  va_end(ap);
}

/* ---- statements -------------------------------------------------------- */

/* The cached statement ID, ready to bind. */
static sqlite3_stmt *statement(ffdl_jobstore *st, int id) {
  return st->stmts[id];
}

/* Every use ends here, so that no statement keeps a read snapshot open and
 * no binding outlives the call that made it (bindings are SQLITE_STATIC). */
static void release(sqlite3_stmt *s) {
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
}

static int bind_text(sqlite3_stmt *s, int i, const char *text) {
  return sqlite3_bind_text(s, i, text, -1, SQLITE_STATIC);
}

/* Steps a statement that returns no rows, then releases it. */
static int execute(ffdl_jobstore *st, sqlite3_stmt *s, const char *what) {
  int rc = sqlite3_step(s) == SQLITE_DONE ? FFDL_OK : sqlite_failure(st, what);
  release(s);
  return rc;
}

static int execute_plain(ffdl_jobstore *st, int id) {
  return execute(st, statement(st, id), statement_sql[id]);
}

static int prepare_statements(ffdl_jobstore *st) {
  for (int i = 0; i < SQL_COUNT; i++)
    if (sqlite3_prepare_v3(st->db, statement_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st->stmts[i],
                           NULL) != SQLITE_OK)
      return sqlite_failure(st, statement_sql[i]);
  return FFDL_OK;
}

/* ---- transactions ------------------------------------------------------ */

static int begin_write(ffdl_jobstore *st) {
  return execute_plain(st, SQL_BEGIN_WRITE);
}

/* Commits when RC is 0, else (or when the commit fails) rolls back.
 * Returns RC, or the commit's error. */
static int finish(ffdl_jobstore *st, int rc) {
  if (rc == FFDL_OK) rc = execute_plain(st, SQL_COMMIT);
  if (rc != FFDL_OK && !sqlite3_get_autocommit(st->db)) execute_plain(st, SQL_ROLLBACK);
  return rc;
}

/* ---- opening ----------------------------------------------------------- */

/* mkdir -p for the directories above PATH's last component. */
static int make_parent_dirs(const char *path) {
  char *dir = strdup(path);
  if (!dir) return FFDL_ENOMEM;
  int rc = FFDL_OK;
  char *slash = strrchr(dir, '/');
  if (slash) *slash = '\0';
  for (char *p = dir + 1; slash && rc == FFDL_OK; p++) {
    if (*p != '/' && *p != '\0') continue;
    char saved = *p;
    *p = '\0';
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) rc = FFDL_EIO;
    *p = saved;
    if (saved == '\0') break;
  }
  int saved_errno = errno; /* for the caller's message */
  free(dir);
  errno = saved_errno;
  return rc;
}

/* Creates the file with mode 0600 before SQLite does (SQLite would use 0644);
 * the -wal and -shm files inherit the database file's mode. */
static int create_private_file(const char *path) {
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return errno == ENOENT ? FFDL_ENOENT : FFDL_EIO;
  close(fd);
  return FFDL_OK;
}

static int set_pragmas(ffdl_jobstore *st) {
  sqlite3_stmt *s;
  if (sqlite3_prepare_v2(st->db, "PRAGMA journal_mode=WAL", -1, &s, NULL) != SQLITE_OK)
    return sqlite_failure(st, "journal_mode");
  int rc = sqlite3_step(s) == SQLITE_ROW ? FFDL_OK : sqlite_failure(st, "journal_mode");
  const char *mode = rc == FFDL_OK ? (const char *)sqlite3_column_text(s, 0) : NULL;
  if (rc == FFDL_OK && (!mode || strcmp(mode, "wal") != 0)) {
    ffdl_log(FFDL_LOG_ERROR, "jobstore %s: WAL mode refused (journal_mode is %s)", st->path,
             mode ? mode : "unknown");
    rc = FFDL_EIO;
  }
  sqlite3_finalize(s);
  if (rc == FFDL_OK && sqlite3_exec(st->db, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON",
                                    NULL, NULL, NULL) != SQLITE_OK)
    rc = sqlite_failure(st, "pragmas");
  return rc;
}

static int read_schema_version(ffdl_jobstore *st, int *version) {
  sqlite3_stmt *s;
  if (sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &s, NULL) != SQLITE_OK)
    return sqlite_failure(st, "user_version");
  int rc = sqlite3_step(s) == SQLITE_ROW ? FFDL_OK : sqlite_failure(st, "user_version");
  if (rc == FFDL_OK) *version = sqlite3_column_int(s, 0);
  sqlite3_finalize(s);
  return rc;
}

static int create_schema(ffdl_jobstore *st, int from_version) {
  char sql[sizeof SCHEMA_V1 + sizeof SCHEMA_V2 + 64];
  snprintf(sql, sizeof sql, "%s%sPRAGMA user_version = %d;", from_version < 1 ? SCHEMA_V1 : "",
           from_version < 2 ? SCHEMA_V2 : "", SCHEMA_VERSION);
  if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK)
    return sqlite_failure(st, "create schema");
  return FFDL_OK;
}

/* Brings the schema to SCHEMA_VERSION. The version is read inside the write
 * transaction, so two processes opening a new file do not both create it. */
static int migrate(ffdl_jobstore *st, char **err) {
  if (sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
    return sqlite_failure(st, "begin migration");
  int version = 0;
  int rc = read_schema_version(st, &version);
  if (rc == FFDL_OK && version < SCHEMA_VERSION) rc = create_schema(st, version);
  if (rc == FFDL_OK && version > SCHEMA_VERSION) {
    set_error(err, "%s: schema version %d is newer than this ffdl supports (%d); upgrade ffdl",
              st->path, version, SCHEMA_VERSION);
    rc = FFDL_EINVALID;
  }
  if (rc == FFDL_OK && sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
    rc = sqlite_failure(st, "commit migration");
  if (rc != FFDL_OK) sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
  return rc;
}

static int open_database(ffdl_jobstore *st) {
  int rc = sqlite3_open_v2(st->path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
  if (rc != SQLITE_OK) return st->db ? sqlite_failure(st, "open") : FFDL_ENOMEM;
  sqlite3_extended_result_codes(st->db, 1);
  sqlite3_busy_timeout(st->db, BUSY_TIMEOUT_MS);
  return FFDL_OK;
}

int ffdl_jobstore_open(const char *path, ffdl_jobstore **out, char **err) {
  *out = NULL;
  if (err) *err = NULL;
  ffdl_jobstore *st = calloc(1, sizeof *st);
  if (!st || !(st->path = strdup(path))) {
    free(st);
    set_error(err, "%s: out of memory", path);
    return FFDL_ENOMEM;
  }
  int rc = make_parent_dirs(path);
  if (rc == FFDL_OK) rc = create_private_file(path);
  if (rc != FFDL_OK) set_error(err, "%s: cannot create: %s", path, strerror(errno));
  if (rc == FFDL_OK) rc = open_database(st);
  if (rc == FFDL_OK) rc = set_pragmas(st);
  if (rc == FFDL_OK) rc = migrate(st, err);
  if (rc == FFDL_OK) rc = prepare_statements(st);
  if (rc != FFDL_OK) {
    if (err && !*err)
      set_error(err, "%s: cannot open the job store: %s", path,
                st->last_error[0] ? st->last_error : ffdl_strerror(rc));
    ffdl_jobstore_close(st);
    return rc;
  }
  *out = st;
  return FFDL_OK;
}

void ffdl_jobstore_close(ffdl_jobstore *st) {
  if (!st) return;
  for (int i = 0; i < SQL_COUNT; i++)
    sqlite3_finalize(st->stmts[i]);
  if (sqlite3_close(st->db) != SQLITE_OK)
    ffdl_log(FFDL_LOG_ERROR, "jobstore %s: close: %s", st->path, sqlite3_errmsg(st->db));
  free(st->path);
  free(st);
}

/* ---- writes ------------------------------------------------------------ */

static int is_terminal(const char *status) {
  return strcmp(status, "COMPLETED") == 0 || strcmp(status, "FAILED") == 0 ||
         strcmp(status, "HALTED") == 0;
}

static int append_transition(ffdl_jobstore *st, const char *id, const char *status,
                             const char *reason, const char *error_code, int64_t now_ms) {
  sqlite3_stmt *s = statement(st, SQL_INSERT_TRANSITION);
  if (bind_text(s, 1, id) || bind_text(s, 2, status) || sqlite3_bind_int64(s, 3, now_ms) ||
      bind_text(s, 4, reason) || bind_text(s, 5, error_code)) {
    int rc = sqlite_failure(st, "bind transition");
    release(s);
    return rc;
  }
  return execute(st, s, "insert transition");
}

static int insert_job(ffdl_jobstore *st, const char *id, const json_t *spec, const char *spec_json,
                      int64_t now_ms) {
  const json_t *framework = json_object_get(spec, "framework");
  sqlite3_stmt *s = statement(st, SQL_INSERT_JOB);
  if (bind_text(s, 1, id) || bind_text(s, 2, json_string_value(json_object_get(spec, "name"))) ||
      bind_text(s, 3, json_string_value(json_object_get(spec, "user"))) ||
      bind_text(s, 4, json_string_value(json_object_get(spec, "team"))) ||
      bind_text(s, 5, json_string_value(json_object_get(framework, "name"))) ||
      sqlite3_bind_int64(s, 6, now_ms) || bind_text(s, 7, spec_json)) {
    int rc = sqlite_failure(st, "bind job");
    release(s);
    return rc;
  }
  return execute(st, s, "insert job");
}

int ffdl_jobstore_create(ffdl_jobstore *st, const char *id, const json_t *spec, int64_t now_ms) {
  if (!id || !json_is_object(spec)) return FFDL_EINVALID;
  char *spec_json = json_dumps(spec, JSON_COMPACT);
  if (!spec_json) return FFDL_ENOMEM;
  int rc = begin_write(st);
  if (rc == FFDL_OK) {
    rc = insert_job(st, id, spec, spec_json, now_ms);
    if (rc == FFDL_OK) rc = append_transition(st, id, "QUEUED", NULL, NULL, now_ms);
    rc = finish(st, rc);
  }
  free(spec_json);
  return rc;
}

/* Sets the job row's status; FFDL_ENOENT when there is no such job. */
static int update_job_status(ffdl_jobstore *st, const char *id, const char *status,
                             const char *reason, const char *error_code, int64_t now_ms) {
  sqlite3_stmt *s = statement(st, SQL_UPDATE_STATUS);
  if (bind_text(s, 1, id) || bind_text(s, 2, status) || bind_text(s, 3, error_code) ||
      sqlite3_bind_int(s, 4, is_terminal(status)) || bind_text(s, 5, reason) ||
      sqlite3_bind_int64(s, 6, now_ms)) {
    int rc = sqlite_failure(st, "bind status");
    release(s);
    return rc;
  }
  int rc = execute(st, s, "update status");
  if (rc == FFDL_OK && sqlite3_changes(st->db) == 0) rc = FFDL_ENOENT;
  return rc;
}

static unsigned long writes;
static double write_seconds, write_max;

void ffdl_jobstore_write_latency(unsigned long *count, double *sum, double *max) {
  *count = writes;
  *sum = write_seconds;
  *max = write_max;
}

static double seconds_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One write transaction (a commit) took the seconds since STARTED. */
static void count_write(double started) {
  double took = seconds_now() - started;
  writes++;
  write_seconds += took;
  if (took > write_max) write_max = took;
}

/* The job row's new status and its transition, inside a write transaction. */
static int record_transition(ffdl_jobstore *st, const char *id, const char *status,
                             const char *reason, const char *error_code, int64_t now_ms) {
  int rc = update_job_status(st, id, status, reason, error_code, now_ms);
  if (rc == FFDL_OK) rc = append_transition(st, id, status, reason, error_code, now_ms);
  return rc;
}

int ffdl_jobstore_transition(ffdl_jobstore *st, const char *id, const char *status,
                             const char *reason, const char *error_code, int64_t now_ms) {
  if (!id || !status) return FFDL_EINVALID;
  double started = seconds_now();
  int rc = begin_write(st);
  if (rc == FFDL_OK) rc = finish(st, record_transition(st, id, status, reason, error_code, now_ms));
  count_write(started);
  return rc;
}

/* The exception to one transaction per state change: a server that halts
 * its whole queue at shutdown would otherwise commit (and append to the WAL,
 * and checkpoint it) once per job, minutes for 100,000 jobs. One commit
 * keeps the rule's point: no job is ever seen half-moved, and a failure
 * leaves every job where it was. */
int ffdl_jobstore_transition_many(ffdl_jobstore *st, const char *const *ids, size_t n,
                                  const char *status, const char *reason, const char *error_code,
                                  int64_t now_ms) {
  if ((!ids && n) || !status) return FFDL_EINVALID;
  double started = seconds_now();
  int rc = begin_write(st);
  if (rc == FFDL_OK) {
    for (size_t i = 0; rc == FFDL_OK && i < n; i++)
      rc = ids[i] ? record_transition(st, ids[i], status, reason, error_code, now_ms)
                  : FFDL_EINVALID;
    rc = finish(st, rc);
  }
  count_write(started);
  return rc;
}

int ffdl_jobstore_learner(ffdl_jobstore *st, const char *id, int learner, int attempt, int pid,
                          const char *status, int exit_code, int signal, int64_t now_ms) {
  if (!id || !status) return FFDL_EINVALID;
  sqlite3_stmt *s = statement(st, SQL_UPSERT_LEARNER);
  if (bind_text(s, 1, id) || sqlite3_bind_int(s, 2, learner) || sqlite3_bind_int(s, 3, attempt) ||
      sqlite3_bind_int(s, 4, pid) || bind_text(s, 5, status) || sqlite3_bind_int(s, 6, exit_code) ||
      sqlite3_bind_int(s, 7, signal) || sqlite3_bind_int64(s, 8, now_ms)) {
    int rc = sqlite_failure(st, "bind learner");
    release(s);
    return rc;
  }
  return execute(st, s, "upsert learner");
}

int ffdl_jobstore_add_metric(ffdl_jobstore *st, const char *id, const json_t *record) {
  if (!id || !json_is_object(record)) return FFDL_EINVALID;
  char *text = json_dumps(record, JSON_COMPACT);
  if (!text) return FFDL_ENOMEM;
  sqlite3_stmt *s = statement(st, SQL_INSERT_METRIC);
  int rc;
  if (bind_text(s, 1, id) || bind_text(s, 2, text)) {
    rc = sqlite_failure(st, "bind metric");
    release(s);
  } else {
    rc = execute(st, s, "insert metric");
  }
  free(text);
  return rc;
}

/* ---- reads ------------------------------------------------------------- */

/* A column as JSON: integers stay integers, NULL becomes null. */
static json_t *column_json(sqlite3_stmt *s, int i) {
  switch (sqlite3_column_type(s, i)) {
  case SQLITE_INTEGER:
    return json_integer(sqlite3_column_int64(s, i));
  case SQLITE_FLOAT:
    return json_real(sqlite3_column_double(s, i));
  case SQLITE_TEXT: {
    const char *text = (const char *)sqlite3_column_text(s, i);
    json_t *v = json_stringn(text, (size_t)sqlite3_column_bytes(s, i));
    return v ? v : json_null(); /* text that is not UTF-8 cannot be a JSON string */
  }
  default:
    return json_null();
  }
}

/* A column that holds JSON text, parsed; null when absent or unreadable. */
static json_t *column_parsed(sqlite3_stmt *s, int i) {
  const char *text = (const char *)sqlite3_column_text(s, i);
  json_t *v = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
  if (text && !v)
    ffdl_log(FFDL_LOG_WARN, "jobstore: unreadable JSON in %s", sqlite3_column_name(s, i));
  return v ? v : json_null();
}

/* V itself when it is an object, else (taking V) a new empty object. */
static json_t *as_object(json_t *v) {
  if (json_is_object(v)) return v;
  json_decref(v);
  return json_object();
}

/* Columns 0..N-1 of the current row as an object keyed by column name. */
static json_t *row_object(sqlite3_stmt *s, int n) {
  json_t *obj = json_object();
  for (int i = 0; obj && i < n; i++)
    if (json_object_set_new(obj, sqlite3_column_name(s, i), column_json(s, i)) != 0) {
      json_decref(obj);
      obj = NULL;
    }
  return obj;
}

static json_t *whole_row(sqlite3_stmt *s) {
  return row_object(s, sqlite3_column_count(s));
}

static json_t *first_column_parsed(sqlite3_stmt *s) {
  return column_parsed(s, 0);
}

/* Runs statement SQL (bound to job ID when ID is set) and appends one
 * value per row, made by TO_JSON, to ARRAY (borrowed). */
static int append_rows(ffdl_jobstore *st, int sql, const char *id, json_t *array,
                       json_t *(*to_json)(sqlite3_stmt *)) {
  sqlite3_stmt *s = statement(st, sql);
  if (id && bind_text(s, 1, id)) {
    int rc = sqlite_failure(st, "bind job id");
    release(s);
    return rc;
  }
  int step, rc = FFDL_OK;
  while (rc == FFDL_OK && (step = sqlite3_step(s)) == SQLITE_ROW)
    if (json_array_append_new(array, to_json(s)) != 0) rc = FFDL_ENOMEM;
  if (rc == FFDL_OK && step != SQLITE_DONE) rc = sqlite_failure(st, statement_sql[sql]);
  release(s);
  return rc;
}

/* An array of rows under KEY in OBJ (borrowed). */
static int add_rows(ffdl_jobstore *st, json_t *obj, const char *key, int sql, const char *id,
                    json_t *(*to_json)(sqlite3_stmt *)) {
  json_t *array = json_array();
  if (!array || json_object_set_new(obj, key, array) != 0) return FFDL_ENOMEM;
  return append_rows(st, sql, id, array, to_json);
}

/* The job row with its spec and extra parsed; *OUT stays NULL when there is
 * no such job. */
static int read_job_row(ffdl_jobstore *st, const char *id, json_t **out) {
  sqlite3_stmt *s = statement(st, SQL_SELECT_JOB);
  int rc = bind_text(s, 1, id) ? sqlite_failure(st, "bind job id") : FFDL_OK;
  int step = rc == FFDL_OK ? sqlite3_step(s) : SQLITE_DONE;
  if (step == SQLITE_ROW) {
    /* json_object_set_new takes the value even when it fails. */
    json_t *job = row_object(s, JOB_PLAIN_COLUMNS);
    if (!job || json_object_set_new(job, "spec", column_parsed(s, JOB_PLAIN_COLUMNS)) ||
        json_object_set_new(job, "extra", as_object(column_parsed(s, JOB_PLAIN_COLUMNS + 1)))) {
      json_decref(job);
      job = NULL;
      rc = FFDL_ENOMEM;
    }
    *out = job;
  } else if (rc == FFDL_OK && step != SQLITE_DONE) {
    rc = sqlite_failure(st, "select job");
  }
  release(s);
  return rc;
}

/* Reads inside one read transaction, so the parts agree with each other. */
json_t *ffdl_jobstore_get(ffdl_jobstore *st, const char *id) {
  if (!id || execute_plain(st, SQL_BEGIN_READ) != FFDL_OK) return NULL;
  json_t *job = NULL;
  int rc = read_job_row(st, id, &job);
  if (rc == FFDL_OK && job)
    rc = add_rows(st, job, "transitions", SQL_SELECT_TRANSITIONS, id, whole_row);
  if (rc == FFDL_OK && job) rc = add_rows(st, job, "learners", SQL_SELECT_LEARNERS, id, whole_row);
  if (rc == FFDL_OK && job)
    rc = add_rows(st, job, "metrics", SQL_SELECT_METRICS, id, first_column_parsed);
  execute_plain(st, SQL_COMMIT);
  if (rc != FFDL_OK) {
    json_decref(job);
    return NULL;
  }
  return job;
}

json_t *ffdl_jobstore_list(ffdl_jobstore *st) {
  json_t *jobs = json_array();
  if (jobs && append_rows(st, SQL_LIST_JOBS, NULL, jobs, whole_row) != FFDL_OK) {
    json_decref(jobs);
    return NULL;
  }
  return jobs;
}

/* ---- extra ------------------------------------------------------------- */

/* The job's extra object (caller decrefs); FFDL_ENOENT when no such job. */
static int read_extra(ffdl_jobstore *st, const char *id, json_t **out) {
  sqlite3_stmt *s = statement(st, SQL_SELECT_EXTRA);
  int rc = bind_text(s, 1, id) ? sqlite_failure(st, "bind job id") : FFDL_OK;
  int step = rc == FFDL_OK ? sqlite3_step(s) : SQLITE_DONE;
  if (step == SQLITE_ROW) {
    json_t *extra = as_object(column_parsed(s, 0));
    *out = extra;
    if (!extra) rc = FFDL_ENOMEM;
  } else if (rc == FFDL_OK) {
    rc = step == SQLITE_DONE ? FFDL_ENOENT : sqlite_failure(st, "select extra");
  }
  release(s);
  return rc;
}

static int write_extra(ffdl_jobstore *st, const char *id, const json_t *extra) {
  char *text = json_dumps(extra, JSON_COMPACT);
  if (!text) return FFDL_ENOMEM;
  sqlite3_stmt *s = statement(st, SQL_UPDATE_EXTRA);
  int rc;
  if (bind_text(s, 1, id) || bind_text(s, 2, text)) {
    rc = sqlite_failure(st, "bind extra");
    release(s);
  } else {
    rc = execute(st, s, "update extra");
  }
  free(text);
  return rc;
}

int ffdl_jobstore_set_extra(ffdl_jobstore *st, const char *id, const char *key,
                            const json_t *value) {
  if (!id || !key || !value) return FFDL_EINVALID;
  int rc = begin_write(st);
  if (rc != FFDL_OK) return rc;
  json_t *extra = NULL;
  rc = read_extra(st, id, &extra);
  /* Fails on a key that is not UTF-8 (or out of memory). */
  if (rc == FFDL_OK && json_object_set_new(extra, key, json_deep_copy(value)) != 0)
    rc = FFDL_EINVALID;
  if (rc == FFDL_OK) rc = write_extra(st, id, extra);
  json_decref(extra);
  return finish(st, rc);
}

/* ---- deletion ---------------------------------------------------------- */

static int delete_rows(ffdl_jobstore *st, const char *sql, const char *id) {
  sqlite3_stmt *s;
  if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK) return sqlite_failure(st, sql);
  bind_text(s, 1, id);
  int rc = sqlite3_step(s) == SQLITE_DONE ? FFDL_OK : sqlite_failure(st, sql);
  sqlite3_finalize(s);
  return rc;
}

int ffdl_jobstore_delete(ffdl_jobstore *st, const char *id) {
  static const char *const sql[] = {"DELETE FROM transitions WHERE job_id = ?1",
                                    "DELETE FROM learners WHERE job_id = ?1",
                                    "DELETE FROM metrics WHERE job_id = ?1",
                                    "DELETE FROM decisions WHERE job_id = ?1",
                                    "DELETE FROM jobs WHERE id = ?1",
                                    NULL};
  int rc = begin_write(st);
  for (const char *const *q = sql; rc == FFDL_OK && *q; q++)
    rc = delete_rows(st, *q, id);
  int deleted = rc == FFDL_OK && sqlite3_changes(st->db) > 0;
  rc = finish(st, rc);
  if (rc == FFDL_OK && !deleted) return FFDL_ENOENT;
  return rc;
}

int ffdl_jobstore_delete_metrics(ffdl_jobstore *st, const char *id) {
  int rc = begin_write(st);
  if (rc == FFDL_OK) rc = delete_rows(st, "DELETE FROM metrics WHERE job_id = ?1", id);
  return finish(st, rc);
}

/* ---- decisions ---------------------------------------------------------- */

int ffdl_jobstore_add_decision(ffdl_jobstore *st, const char *id, const json_t *decision) {
  char *text = json_dumps(decision, JSON_COMPACT);
  if (!text) return FFDL_ENOMEM;
  sqlite3_stmt *s;
  static const char sql[] =
      "INSERT INTO decisions (job_id, seq, decision_json) VALUES (?1,"
      " (SELECT COALESCE(MAX(seq), 0) + 1 FROM decisions WHERE job_id = ?1), ?2)";
  int rc = sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) == SQLITE_OK ? FFDL_OK
                                                                      : sqlite_failure(st, sql);
  if (rc == FFDL_OK) {
    bind_text(s, 1, id);
    bind_text(s, 2, text);
    int step = sqlite3_step(s);
    rc = step == SQLITE_DONE         ? FFDL_OK
         : step == SQLITE_CONSTRAINT ? FFDL_ENOENT
                                     : sqlite_failure(st, sql);
    sqlite3_finalize(s);
  }
  free(text);
  return rc;
}

json_t *ffdl_jobstore_decisions(ffdl_jobstore *st, const char *id) {
  json_t *out = json_array();
  sqlite3_stmt *s;
  static const char sql[] = "SELECT decision_json FROM decisions WHERE job_id = ?1 ORDER BY seq";
  if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK) return out;
  bind_text(s, 1, id);
  while (sqlite3_step(s) == SQLITE_ROW) {
    json_t *d = json_loads((const char *)sqlite3_column_text(s, 0), 0, NULL);
    if (d) json_array_append_new(out, d);
  }
  sqlite3_finalize(s);
  return out;
}

/* ---- the job list with specs (one query, for the API) ------------------- */

json_t *ffdl_jobstore_list_with_specs(ffdl_jobstore *st, const char *user) {
  static const char sql[] =
      "SELECT id, name, user, team, framework, status, error_code, status_message, submitted_ms,"
      " completed_ms, spec_json FROM jobs WHERE ?1 IS NULL OR user = ?1"
      " ORDER BY submitted_ms DESC, rowid DESC";
  json_t *out = json_array();
  sqlite3_stmt *s;
  if (sqlite3_prepare_v2(st->db, sql, -1, &s, NULL) != SQLITE_OK) {
    sqlite_failure(st, sql);
    return out;
  }
  if (user) bind_text(s, 1, user);
  while (sqlite3_step(s) == SQLITE_ROW) {
    json_t *row = json_object();
    for (int i = 0; i < 10; i++)
      json_object_set_new(row, sqlite3_column_name(s, i), column_json(s, i));
    json_t *spec = json_loads((const char *)sqlite3_column_text(s, 10), 0, NULL);
    json_object_set_new(row, "spec", spec ? spec : json_object());
    json_array_append_new(out, row);
  }
  sqlite3_finalize(s);
  return out;
}
