/*
 * The local backend with real processes: lines read back from the log file,
 * exit kinds and exit files, kills of whole process groups, backend close and
 * abandon, and adoption of learners by another backend. Each case has its own
 * loop (two for adoption), and kills what it started (by PID or process group,
 * never by name) if it fails half-way.
 */
#include "backend/backend.h"
#include "core/error.h"
#include "runner.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINES 16 /* lines kept; more are only counted */
#define WAIT_MS 10000

static const char *const BASE_ENV[] = {"PATH=/usr/bin:/bin", NULL};

/* ---- leftovers: what a failing case must kill on its way out ---------- */

static int live_groups[16], live_pids[16];

static void track(int *set, int id, int on) {
  for (int i = 0; i < 16; i++)
    if (on ? set[i] == 0 : set[i] == id) {
      set[i] = on ? id : 0;
      return;
    }
}

/* Only groups whose on_exit has not run, and pids not yet reaped: those ids
 * cannot have been reused. Async-signal-safe. */
static void kill_leftovers(void) {
  for (int i = 0; i < 16; i++) {
    if (live_groups[i] > 0) kill(-live_groups[i], SIGKILL);
    if (live_pids[i] > 0) kill(live_pids[i], SIGKILL);
  }
}

static void on_alarm(int sig) {
  kill_leftovers();
  _exit(1);
}

/* ---- recording callbacks ---------------------------------------------- */

typedef struct rec rec;
struct rec {
  ffdl_backend *be;
  uv_loop_t *loop;
  char *lines[MAX_LINES];
  size_t lens[MAX_LINES];
  int n_lines;
  char *last; /* the latest line */
  int exits;
  ffdl_exit_kind kind;
  int code, sig;
  uint64_t exit_ms;
  void (*hook)(rec *r, ffdl_learner *l, const char *line); /* on each line */
  const char *fifo;                                        /* for the ordering hook */
  int grandchild;
  uint64_t kill_ms;
  char exit_path[160]; /* where launch_env asked for the exit status ("": nowhere) */
  int pid;             /* the learner's, as the hooks and on_exit saw it */
  uint64_t offset;     /* ffdl_learner_log_offset, as the hooks and on_exit saw it */
  int abandoned;
};

static void on_line(void *ud, ffdl_learner *l, const char *line, size_t len) {
  rec *r = ud;
  CHECK(line[len] == '\0');
  if (r->n_lines < MAX_LINES) {
    r->lines[r->n_lines] = strndup(line, len);
    r->lens[r->n_lines] = len;
  }
  r->n_lines++;
  free(r->last);
  r->last = strndup(line, len);
  if (r->hook) r->hook(r, l, line);
}

static void on_exit_cb(void *ud, ffdl_learner *l, ffdl_exit_kind kind, int code, int sig) {
  rec *r = ud;
  r->exits++;
  r->kind = kind;
  r->code = code;
  r->sig = sig;
  r->exit_ms = uv_now(r->loop);
  r->pid = ffdl_learner_pid(l);
  r->offset = ffdl_learner_log_offset(l);
  track(live_groups, ffdl_learner_pid(l), 0);
  ffdl_backend_kill(r->be, l, 0); /* after its exit: a no-op */
}

static const ffdl_learner_callbacks callbacks = {on_line, on_exit_cb};

static void rec_free(rec *r) {
  for (int i = 0; i < r->n_lines && i < MAX_LINES; i++)
    free(r->lines[i]);
  free(r->last);
}

/* ---- fixture: a loop, a backend, a temporary directory ---------------- */

typedef struct {
  uv_loop_t loop;
  uv_timer_t watchdog;
  ffdl_backend *be;
  char dir[64];
  char log[128];
  int unwrapped; /* launch without an exit_path (no wrapper) */
  int launches;  /* numbers the exit files */
} fixture;

static void setup(fixture *f) {
  memset(f, 0, sizeof *f);
  atexit(kill_leftovers);
  signal(SIGALRM, on_alarm);
  CHECK(uv_loop_init(&f->loop) == 0);
  CHECK(uv_timer_init(&f->loop, &f->watchdog) == 0);
  CHECK(ffdl_backend_local_new(&f->loop, &f->be) == FFDL_OK);
  strcpy(f->dir, "/tmp/ffdl-backend-XXXXXX");
  CHECK(mkdtemp(f->dir) != NULL);
  snprintf(f->log, sizeof f->log, "%s/training-log.txt", f->dir);
}

static void set_flag(void *ud) {
  (*(int *)ud)++;
}

/* Removes the files of DIR (logs, exit files, FIFOs), then DIR. */
static void remove_dir(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char path[512];
  while (d && (e = readdir(d)))
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      unlink(path);
    }
  if (d) closedir(d);
  rmdir(dir);
}

static void teardown(fixture *f) {
  int closed = 0;
  if (f->be) ffdl_backend_close(f->be, set_flag, &closed);
  uv_close((uv_handle_t *)&f->watchdog, NULL);
  CHECK(uv_run(&f->loop, UV_RUN_DEFAULT) == 0);
  CHECK(!f->be || closed == 1);
  CHECK(uv_loop_close(&f->loop) == 0);
  remove_dir(f->dir);
}

static rec new_rec(fixture *f) {
  return (rec){.be = f->be, .loop = &f->loop};
}

/* Launches with the fixture's log and, unless F is unwrapped, an exit file of
 * R's own (R->exit_path). */
static ffdl_learner *launch_env(fixture *f, const char *const *argv, const char *const *env,
                                rec *r) {
  r->exit_path[0] = '\0';
  if (!f->unwrapped)
    snprintf(r->exit_path, sizeof r->exit_path, "%s/exit-%d", f->dir, ++f->launches);
  ffdl_launch_spec spec = {.argv = argv,
                           .env = env,
                           .cwd = f->dir,
                           .log_path = f->log,
                           .exit_path = r->exit_path[0] ? r->exit_path : NULL};
  ffdl_learner *l = NULL;
  char *err = NULL;
  int rc = ffdl_backend_launch(f->be, &spec, &callbacks, r, &l, &err);
  if (rc) fprintf(stderr, "launch: %s\n", err);
  CHECK(rc == FFDL_OK && l && ffdl_learner_pid(l) > 0);
  track(live_groups, ffdl_learner_pid(l), 1);
  return l;
}

static ffdl_learner *launch_sh(fixture *f, const char *script, rec *r) {
  const char *argv[] = {"sh", "-c", script, "sh", r->fifo, NULL};
  return launch_env(f, argv, BASE_ENV, r);
}

static void on_watchdog(uv_timer_t *t) {
  fprintf(stderr, "timed out waiting on the loop\n");
  exit(1);
}

/* Runs the loop until *COUNT reaches WANT, failing after WAIT_MS. */
static void wait_for(fixture *f, const int *count, int want) {
  uv_timer_start(&f->watchdog, on_watchdog, WAIT_MS, 0);
  while (*count < want)
    uv_run(&f->loop, UV_RUN_ONCE);
  uv_timer_stop(&f->watchdog);
}

static char *read_file(const char *path) {
  static char buf[4096];
  int fd = open(path, O_RDONLY);
  if (fd < 0) fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
  CHECK(fd >= 0);
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  CHECK(n >= 0);
  buf[n] = '\0';
  return buf;
}

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Reaps PID (an orphan of ours: we are its subreaper), waiting at most 5 s. */
static void reap(int pid, int *status) {
  struct timespec tick = {0, 10 * 1000 * 1000};
  uint64_t deadline = now_ms() + 5000;
  int got;
  while ((got = waitpid(pid, status, WNOHANG)) == 0 && now_ms() < deadline)
    nanosleep(&tick, NULL);
  CHECK(got == pid);
  track(live_pids, pid, 0);
}

/* ---- cases ------------------------------------------------------------ */

/* After each line but the last the child waits on its own FIFO (one per line,
 * so a reopen cannot meet the previous writer): arrival order is known. */
static void release_child(rec *r, ffdl_learner *l, const char *line) {
  char fifo[160];
  if (strcmp(line, "three") == 0) return;
  snprintf(fifo, sizeof fifo, "%s/%s", r->fifo, line);
  int fd = open(fifo, O_WRONLY);
  CHECK(fd >= 0);
  CHECK(write(fd, "x\n", 2) == 2);
  close(fd);
}

static void lines_arrive_in_order_and_are_logged(void) {
  fixture f;
  setup(&f);
  char one[128], two[128];
  snprintf(one, sizeof one, "%s/one", f.dir);
  snprintf(two, sizeof two, "%s/two", f.dir);
  CHECK(mkfifo(one, 0600) == 0 && mkfifo(two, 0600) == 0);
  rec r = new_rec(&f);
  r.fifo = f.dir;
  r.hook = release_child;
  launch_sh(&f, "echo one; read x < \"$1/one\"; echo two >&2; read x < \"$1/two\"; echo three", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.kind == FFDL_EXIT_OK && r.code == 0 && r.sig == 0);
  CHECK(r.n_lines == 3);
  CHECK(strcmp(r.lines[0], "one") == 0);
  CHECK(strcmp(r.lines[1], "two") == 0);
  CHECK(strcmp(r.lines[2], "three") == 0);
  CHECK(strcmp(read_file(f.log), "one\ntwo\nthree\n") == 0);
  rec_free(&r);
  unlink(one);
  unlink(two);
  teardown(&f);
}

/* With the exit-status wrapper (as the orchestrator launches), or without. */
static void classify_exit_codes(int unwrapped) {
  fixture f;
  setup(&f);
  f.unwrapped = unwrapped;
  rec ok = new_rec(&f), bad = new_rec(&f);
  launch_sh(&f, "exit 0", &ok);
  launch_sh(&f, "exit 3", &bad);
  CHECK(ffdl_backend_running(f.be) == 2);
  wait_for(&f, &ok.exits, 1);
  wait_for(&f, &bad.exits, 1);
  CHECK(ffdl_backend_running(f.be) == 0);
  CHECK(ok.kind == FFDL_EXIT_OK && ok.code == 0);
  CHECK(bad.kind == FFDL_EXIT_CODE && bad.code == 3 && bad.sig == 0);
  teardown(&f);
  CHECK(ok.exits == 1 && bad.exits == 1);
}

static void exit_codes_are_classified(void) {
  classify_exit_codes(0);
}

static void exit_codes_are_classified_without_wrapper(void) {
  classify_exit_codes(1);
}

static void classify_a_signal(int unwrapped) {
  fixture f;
  setup(&f);
  f.unwrapped = unwrapped;
  rec r = new_rec(&f);
  launch_sh(&f, "kill -9 $$", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.kind == FFDL_EXIT_SIGNAL && r.sig == SIGKILL && r.code == 0);
  teardown(&f);
}

static void a_signal_is_classified(void) {
  classify_a_signal(0);
}

static void a_signal_is_classified_without_wrapper(void) {
  classify_a_signal(1);
}

static int open_fds(void) {
  char path[64];
  int n = 0;
  for (int fd = 0; fd < 1024; fd++) {
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    n += access(path, F_OK) == 0;
  }
  return n;
}

/* A spawn that fails in uv_spawn (the working directory is missing). */
static void launch_in_missing_dir(fixture *f, rec *r) {
  const char *argv[] = {"sh", "-c", "true", NULL};
  ffdl_launch_spec spec = {.argv = argv, .env = BASE_ENV, .cwd = "/nonexistent-ffdl-dir"};
  ffdl_learner *l = (ffdl_learner *)r; /* any non-NULL: a failed launch resets it */
  char *err = NULL;
  CHECK(ffdl_backend_launch(f->be, &spec, &callbacks, r, &l, &err) < 0);
  CHECK(l == NULL);
  CHECK_CONTAINS(err, "\"sh\"");
  CHECK_CONTAINS(err, "/nonexistent-ffdl-dir");
  free(err);
  CHECK(ffdl_backend_running(f->be) == 0);
  uv_run(&f->loop, UV_RUN_NOWAIT); /* its handles close */
}

static void missing_command_fails_at_launch(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  const char *argv[] = {"ffdl-no-such-command", "--flag", NULL};
  ffdl_launch_spec spec = {.argv = argv, .env = BASE_ENV, .cwd = f.dir, .log_path = f.log};
  ffdl_learner *l = (ffdl_learner *)&r;
  char *err = NULL;
  CHECK(ffdl_backend_launch(f.be, &spec, &callbacks, &r, &l, &err) == FFDL_ENOENT);
  CHECK(l == NULL);
  CHECK_CONTAINS(err, "ffdl-no-such-command");
  CHECK_CONTAINS(err, "not found");
  free(err);
  launch_in_missing_dir(&f, &r); /* the first spawn also opens libuv's signal pipes */
  int fds = open_fds();
  launch_in_missing_dir(&f, &r);
  CHECK(open_fds() == fds); /* the failed spawn's pipes are closed */
  teardown(&f);
  CHECK(r.exits == 0 && r.n_lines == 0);
}

static void missing_log_directory_fails_at_launch(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  const char *argv[] = {"true", NULL};
  ffdl_launch_spec spec = {.argv = argv, .env = BASE_ENV, .log_path = "/nonexistent-ffdl/log"};
  ffdl_learner *l;
  char *err = NULL;
  CHECK(ffdl_backend_launch(f.be, &spec, &callbacks, &r, &l, &err) < 0);
  CHECK_CONTAINS(err, "/nonexistent-ffdl/log");
  free(err);
  teardown(&f);
  CHECK(r.exits == 0);
}

static void partial_last_line_arrives(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  launch_sh(&f, "printf 'first\\nlast'", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.n_lines == 2);
  CHECK(strcmp(r.lines[0], "first") == 0);
  CHECK(strcmp(r.lines[1], "last") == 0);
  CHECK(strcmp(read_file(f.log), "first\nlast") == 0); /* as the learner wrote it */
  rec_free(&r);
  teardown(&f);
}

/* More output than a pipe holds is still unread when the leader exits. */
static void no_line_is_lost_after_exit(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  launch_sh(&f, "seq 1 50000; seq 1 50000 >&2", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.kind == FFDL_EXIT_OK);
  CHECK(r.n_lines == 100000);
  CHECK(strcmp(r.last, "50000") == 0);
  rec_free(&r);
  teardown(&f);
}

static void long_line_is_cut_at_64k(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  launch_sh(&f, "head -c 70000 /dev/zero | tr '\\0' x; echo; echo end", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.n_lines == 3);
  CHECK(r.lens[0] == 65536 && r.lens[1] == 70000 - 65536);
  CHECK(r.lines[0][0] == 'x' && r.lines[1][r.lens[1] - 1] == 'x');
  CHECK(strcmp(r.lines[2], "end") == 0);
  rec_free(&r);
  teardown(&f);
}

static void kill_when_ready(rec *r, ffdl_learner *l, const char *line) {
  if (strcmp(line, "ready") != 0) return;
  r->kill_ms = uv_now(r->loop);
  ffdl_backend_kill(r->be, l, 300);
  ffdl_backend_kill(r->be, l, 5000); /* a longer grace does not postpone the first */
}

static void kill_escalates_after_grace(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  r.hook = kill_when_ready;
  launch_sh(&f, "trap '' TERM; echo ready; sleep 30", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.kind == FFDL_EXIT_SIGNAL && r.sig == SIGKILL);
  CHECK(r.exit_ms - r.kill_ms >= 300);
  rec_free(&r);
  teardown(&f);
}

static void kill_on_first_line(rec *r, ffdl_learner *l, const char *line) {
  r->grandchild = atoi(line);
  CHECK(r->grandchild > 0);
  track(live_pids, r->grandchild, 1);
  ffdl_backend_kill(r->be, l, 2000);
}

static void kill_reaches_grandchildren(void) {
  CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); /* orphans come to us: reap them */
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  r.hook = kill_on_first_line;
  launch_sh(&f, "sleep 300 & echo $!; wait", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.kind == FFDL_EXIT_SIGNAL && r.sig == SIGTERM);
  int status = 0;
  reap(r.grandchild, &status);
  CHECK(WIFSIGNALED(status));
  CHECK(kill(r.grandchild, 0) == -1 && errno == ESRCH);
  rec_free(&r);
  teardown(&f);
}

static void remember_grandchild(rec *r, ffdl_learner *l, const char *line) {
  r->grandchild = atoi(line);
  track(live_pids, r->grandchild, 1);
}

static void exit_kills_what_the_leader_left(void) {
  CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  r.hook = remember_grandchild;
  launch_sh(&f, "sleep 300 & echo $!", &r); /* the sleep holds stdout open */
  wait_for(&f, &r.exits, 1);
  CHECK(r.kind == FFDL_EXIT_OK);
  int status = 0;
  reap(r.grandchild, &status);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  rec_free(&r);
  teardown(&f);
}

typedef struct {
  rec *a, *b;
  int calls, exits_seen;
} close_state;

static void on_backend_closed(void *ud) {
  close_state *s = ud;
  s->calls++;
  s->exits_seen = s->a->exits + s->b->exits;
}

static void close_kills_running_learners(void) {
  fixture f;
  setup(&f);
  rec a = new_rec(&f), b = new_rec(&f);
  const char *argv[] = {"sleep", "30", NULL};
  launch_env(&f, argv, BASE_ENV, &a);
  launch_env(&f, argv, BASE_ENV, &b);
  CHECK(ffdl_backend_running(f.be) == 2);
  close_state s = {&a, &b, 0, 0};
  ffdl_backend_close(f.be, on_backend_closed, &s);
  f.be = NULL;
  wait_for(&f, &s.calls, 1);
  CHECK(s.calls == 1 && s.exits_seen == 2);
  CHECK(a.kind == FFDL_EXIT_SIGNAL && a.sig == SIGKILL);
  CHECK(b.kind == FFDL_EXIT_SIGNAL && b.sig == SIGKILL);
  teardown(&f);
}

static void close_without_learners_is_immediate(void) {
  fixture f;
  setup(&f);
  int closed = 0;
  ffdl_backend_close(f.be, set_flag, &closed);
  CHECK(closed == 1);
  f.be = NULL;
  teardown(&f);
}

static void env_is_passed_whole(void) {
  CHECK(setenv("FFDL_PARENT_ONLY", "leaked", 1) == 0);
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  const char *env[] = {"PATH=/usr/bin:/bin", "FOO=bar", NULL};
  const char *argv[] = {"sh", "-c", "echo \"FOO=$FOO\"; echo \"P=${FFDL_PARENT_ONLY-unset}\"",
                        NULL};
  launch_env(&f, argv, env, &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.n_lines == 2);
  CHECK(strcmp(r.lines[0], "FOO=bar") == 0);
  CHECK(strcmp(r.lines[1], "P=unset") == 0);
  rec_free(&r);
  teardown(&f);
}

static void command_is_found_through_the_learners_path(void) {
  fixture f;
  setup(&f);
  char bin[128], tool[160], path[200];
  snprintf(bin, sizeof bin, "%s/bin", f.dir);
  snprintf(tool, sizeof tool, "%s/ffdl-test-tool", bin);
  snprintf(path, sizeof path, "PATH=%s:/usr/bin:/bin", bin);
  CHECK(mkdir(bin, 0700) == 0);
  FILE *script = fopen(tool, "w");
  CHECK(script != NULL);
  fputs("#!/bin/sh\necho \"tool ran: $1\"\n", script);
  fclose(script);
  CHECK(chmod(tool, 0700) == 0);
  rec r = new_rec(&f);
  const char *env[] = {path, NULL};
  const char *argv[] = {"ffdl-test-tool", "arg", NULL};
  launch_env(&f, argv, env, &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.kind == FFDL_EXIT_OK && r.n_lines == 1);
  CHECK(strcmp(r.lines[0], "tool ran: arg") == 0);
  rec_free(&r);
  unlink(tool);
  rmdir(bin);
  teardown(&f);
}

static void stdin_is_dev_null(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  launch_sh(&f, "readlink /proc/self/fd/0; cat; echo done", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.n_lines == 2);
  CHECK(strcmp(r.lines[0], "/dev/null") == 0);
  CHECK(strcmp(r.lines[1], "done") == 0);
  rec_free(&r);
  teardown(&f);
}

/* ---- log files and exit files ----------------------------------------- */

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  CHECK(fd >= 0);
  CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
  close(fd);
}

static uint64_t file_size(const char *path) {
  struct stat st;
  CHECK(stat(path, &st) == 0);
  return (uint64_t)st.st_size;
}

/* A retry appends to the same log: the earlier attempt's lines stay unreported. */
static void an_existing_log_is_not_replayed(void) {
  fixture f;
  setup(&f);
  write_file(f.log, "old\nold partial");
  rec r = new_rec(&f);
  launch_sh(&f, "echo; echo new", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.n_lines == 2);
  CHECK(strcmp(r.lines[0], "") == 0 && strcmp(r.lines[1], "new") == 0);
  CHECK(r.offset == file_size(f.log));
  CHECK(strcmp(read_file(f.log), "old\nold partial\nnew\n") == 0);
  rec_free(&r);
  teardown(&f);
}

static void no_log_means_no_lines(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  const char *argv[] = {"sh", "-c", "echo out; echo err >&2; exit 5", NULL};
  snprintf(r.exit_path, sizeof r.exit_path, "%s/exit", f.dir);
  ffdl_launch_spec spec = {.argv = argv, .env = BASE_ENV, .cwd = f.dir, .exit_path = r.exit_path};
  ffdl_learner *l = NULL;
  char *err = NULL;
  CHECK(ffdl_backend_launch(f.be, &spec, &callbacks, &r, &l, &err) == FFDL_OK);
  track(live_groups, ffdl_learner_pid(l), 1);
  wait_for(&f, &r.exits, 1);
  CHECK(r.n_lines == 0 && r.kind == FFDL_EXIT_CODE && r.code == 5 && r.offset == 0);
  CHECK(strcmp(read_file(r.exit_path), "5") == 0);
  rec_free(&r);
  teardown(&f);
}

static void unwritable_exit_path_fails_at_launch(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  const char *argv[] = {"true", NULL};
  ffdl_launch_spec spec = {.argv = argv,
                           .env = BASE_ENV,
                           .log_path = f.log,
                           .exit_path = "/nonexistent-ffdl/exit_status"};
  ffdl_learner *l = (ffdl_learner *)&r;
  char *err = NULL;
  CHECK(ffdl_backend_launch(f.be, &spec, &callbacks, &r, &l, &err) < 0);
  CHECK(l == NULL);
  CHECK_CONTAINS(err, "/nonexistent-ffdl/exit_status");
  free(err);
  CHECK(ffdl_backend_running(f.be) == 0);
  teardown(&f);
  CHECK(r.exits == 0);
}

/* The three kinds of ends, as the wrapper leaves them on disk. */
static void exit_file_holds_the_status(void) {
  fixture f;
  setup(&f);
  rec ok = new_rec(&f), bad = new_rec(&f), killed = new_rec(&f);
  launch_sh(&f, "exit 0", &ok);
  launch_sh(&f, "exit 3", &bad);
  launch_sh(&f, "kill -9 $$", &killed);
  wait_for(&f, &ok.exits, 1);
  wait_for(&f, &bad.exits, 1);
  wait_for(&f, &killed.exits, 1);
  CHECK(strcmp(read_file(ok.exit_path), "0") == 0);
  CHECK(strcmp(read_file(bad.exit_path), "3") == 0);
  CHECK(strcmp(read_file(killed.exit_path), "137") == 0);
  char tmp[200];
  snprintf(tmp, sizeof tmp, "%s.tmp", killed.exit_path);
  CHECK(access(tmp, F_OK) != 0);
  CHECK(strcmp(read_file(f.log), "") == 0); /* no "Killed" from the wrapper */
  CHECK(ok.kind == FFDL_EXIT_OK);
  CHECK(bad.kind == FFDL_EXIT_CODE && bad.code == 3);
  CHECK(killed.kind == FFDL_EXIT_SIGNAL && killed.sig == SIGKILL);
  teardown(&f);
}

/* The learner runs as the wrapper's child, in the wrapper's group and session,
 * with no descriptor of the wrapper's. */
static void wrapper_leads_the_group(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  launch_sh(&f,
            "read -r pid comm state ppid pgrp session rest < /proc/$$/stat; "
            "echo $pid; echo $ppid; echo $pgrp; echo $session; "
            "if [ -e /proc/$$/fd/3 ]; then echo fd3-open; else echo fd3-closed; fi",
            &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.kind == FFDL_EXIT_OK && r.n_lines == 5);
  CHECK(strcmp(r.lines[4], "fd3-closed") == 0); /* the wrapper's copy of stderr */
  int leader = r.pid;
  CHECK(atoi(r.lines[0]) != leader);
  CHECK(atoi(r.lines[1]) == leader);
  CHECK(atoi(r.lines[2]) == leader && atoi(r.lines[3]) == leader);
  rec_free(&r);
  teardown(&f);
}

static void term_when_ready(rec *r, ffdl_learner *l, const char *line) {
  if (strcmp(line, "ready") == 0) ffdl_backend_kill(r->be, l, 60000);
}

/* SIGTERM to the group reaches the learner, and the wrapper outlives the
 * learner's own shutdown to record how it ended. */
static void a_graceful_end_after_sigterm_is_recorded(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  r.hook = term_when_ready;
  launch_sh(&f, "trap 'echo saving; exit 7' TERM; echo ready; while :; do sleep 0.05; done", &r);
  wait_for(&f, &r.exits, 1);
  CHECK(r.kind == FFDL_EXIT_CODE && r.code == 7);
  /* the learner's shell may say "Terminated" about its sleep before that */
  CHECK(strcmp(r.lines[0], "ready") == 0 && strcmp(r.last, "saving") == 0);
  CHECK(strcmp(read_file(r.exit_path), "7") == 0);
  rec_free(&r);
  teardown(&f);
}

/* ---- abandon and adopt ------------------------------------------------ */

/* Stands for a crash: the backend goes away at line AT, its learner runs on. */
static void abandon_at(rec *r, ffdl_learner *l, const char *line, const char *at) {
  if (strcmp(line, at) != 0) return;
  r->pid = ffdl_learner_pid(l);
  r->offset = ffdl_learner_log_offset(l);
  r->abandoned++;
  ffdl_backend_abandon(r->be);
}

static void abandon_at_line_5(rec *r, ffdl_learner *l, const char *line) {
  abandon_at(r, l, line, "line-5");
}

static void abandon_at_one(rec *r, ffdl_learner *l, const char *line) {
  abandon_at(r, l, line, "one");
}

static void abandon_after_grandchild(rec *r, ffdl_learner *l, const char *line) {
  r->grandchild = atoi(line);
  CHECK(r->grandchild > 0);
  track(live_pids, r->grandchild, 1);
  abandon_at(r, l, line, line);
}

/* Runs A's loop until the abandoned backend has closed every handle. */
static void finish_abandoned(fixture *a) {
  a->be = NULL;
  CHECK(uv_run(&a->loop, UV_RUN_DEFAULT) == 0);
}

/* Opens the FIFO DIR/NAME for writing (waits for its reader) and writes to it. */
static void release(const char *dir, const char *name) {
  char path[200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_WRONLY);
  CHECK(fd >= 0);
  CHECK(write(fd, "x\n", 2) == 2);
  close(fd);
}

static void make_fifo(const char *dir, const char *name) {
  char path[200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  CHECK(mkfifo(path, 0600) == 0);
}

static ffdl_learner *adopt(fixture *b, rec *r, int pid, const char *log, uint64_t offset,
                           const char *exit_path) {
  ffdl_learner *l = NULL;
  char *err = NULL;
  int rc = ffdl_backend_adopt(b->be, pid, log, offset, exit_path, &callbacks, r, &l, &err);
  if (rc) fprintf(stderr, "adopt: %s\n", err);
  CHECK(rc == FFDL_OK && l && ffdl_learner_pid(l) == pid);
  CHECK(ffdl_learner_log_offset(l) == offset);
  return l;
}

/* Reaps PID, our own child, which an adopter saw end (a zombie until now). */
static int reap_child(int pid) {
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  return status;
}

static void abandon_leaves_learners_running(void) {
  fixture a;
  setup(&a);
  make_fifo(a.dir, "go");
  rec r = new_rec(&a);
  r.fifo = a.dir;
  r.hook = abandon_at_one;
  launch_sh(&a, "echo one; read x < \"$1/go\"; echo two", &r);
  wait_for(&a, &r.abandoned, 1);
  finish_abandoned(&a); /* every handle closed, the backend freed, no callback */
  CHECK(r.exits == 0 && r.n_lines == 1);
  CHECK(kill(r.pid, 0) == 0); /* still running */
  release(a.dir, "go");
  int status = reap_child(r.pid);
  track(live_groups, r.pid, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(strcmp(read_file(r.exit_path), "0") == 0);
  CHECK(strcmp(read_file(a.log), "one\ntwo\n") == 0);
  rec_free(&r);
  teardown(&a);
}

/* Backend A on loop A goes away after line-5 (with "line-" of the next line
 * perhaps read already); backend B on loop B adopts the learner from A's
 * offset while it runs: every line exactly once, and the real status. */
static void adopt_continues_where_the_last_backend_stopped(void) {
  fixture a, b;
  setup(&a);
  setup(&b);
  make_fifo(a.dir, "go");
  rec ra = new_rec(&a);
  ra.fifo = a.dir;
  ra.hook = abandon_at_line_5;
  launch_sh(&a,
            "for i in 1 2 3 4 5; do echo line-$i; done; printf line-; read x < \"$1/go\"; "
            "echo 6; for i in 7 8 9 10; do printf line-; sleep 0.02; echo $i; done; exit 4",
            &ra);
  wait_for(&a, &ra.abandoned, 1);
  finish_abandoned(&a);
  CHECK(ra.n_lines == 5 && ra.exits == 0);
  for (int i = 0; i < 5; i++) {
    char want[16];
    snprintf(want, sizeof want, "line-%d", i + 1);
    CHECK(strcmp(ra.lines[i], want) == 0);
  }
  CHECK(ra.offset == strlen("line-1\nline-2\nline-3\nline-4\nline-5\n"));

  rec rb = new_rec(&b);
  adopt(&b, &rb, ra.pid, a.log, ra.offset, ra.exit_path);
  CHECK(ffdl_backend_running(b.be) == 1);
  release(a.dir, "go"); /* only now may the learner end */
  wait_for(&b, &rb.exits, 1);
  CHECK(rb.n_lines == 5);
  for (int i = 0; i < 5; i++) {
    char want[16];
    snprintf(want, sizeof want, "line-%d", i + 6);
    CHECK(strcmp(rb.lines[i], want) == 0);
  }
  CHECK(rb.kind == FFDL_EXIT_CODE && rb.code == 4 && rb.sig == 0);
  CHECK(rb.offset == file_size(a.log));
  CHECK(ffdl_backend_running(b.be) == 0);
  int status = reap_child(ra.pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 4);
  rec_free(&ra);
  rec_free(&rb);
  teardown(&b);
  teardown(&a);
}

/* The learner ends while no backend watches (and is reaped, as init would):
 * adopting it replays the lines from the offset and reports its real status. */
static void adopt_reports_a_learner_that_ended_unwatched(void) {
  fixture a, b;
  setup(&a);
  setup(&b);
  make_fifo(a.dir, "go");
  rec ra = new_rec(&a);
  ra.fifo = a.dir;
  ra.hook = abandon_at_one;
  launch_sh(&a, "echo one; read x < \"$1/go\"; echo two; printf three; exit 3", &ra);
  wait_for(&a, &ra.abandoned, 1);
  finish_abandoned(&a);
  release(a.dir, "go");
  int status = reap_child(ra.pid);
  track(live_groups, ra.pid, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 3);

  rec from_offset = new_rec(&b), from_start = new_rec(&b);
  adopt(&b, &from_offset, ra.pid, a.log, ra.offset, ra.exit_path);
  adopt(&b, &from_start, ra.pid, a.log, 0, ra.exit_path);
  CHECK(from_offset.exits == 0 && from_offset.n_lines == 0); /* nothing within adopt */
  CHECK(ffdl_backend_running(b.be) == 2);
  wait_for(&b, &from_offset.exits, 1);
  wait_for(&b, &from_start.exits, 1);
  CHECK(from_offset.n_lines == 2);
  CHECK(strcmp(from_offset.lines[0], "two") == 0 && strcmp(from_offset.lines[1], "three") == 0);
  CHECK(from_start.n_lines == 3 && strcmp(from_start.lines[0], "one") == 0);
  CHECK(from_offset.kind == FFDL_EXIT_CODE && from_offset.code == 3);
  CHECK(from_start.kind == FFDL_EXIT_CODE && from_start.code == 3);
  CHECK(from_offset.offset == file_size(a.log) && from_start.offset == file_size(a.log));
  rec_free(&ra);
  rec_free(&from_offset);
  rec_free(&from_start);
  teardown(&b);
  teardown(&a);
}

static void kill_of_an_adopted_learner_reaches_its_group(void) {
  CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); /* orphans come to us: reap them */
  fixture a, b;
  setup(&a);
  setup(&b);
  rec ra = new_rec(&a);
  ra.hook = abandon_after_grandchild;
  launch_sh(&a, "sleep 300 & echo $!; wait", &ra);
  wait_for(&a, &ra.abandoned, 1);
  finish_abandoned(&a);

  rec rb = new_rec(&b);
  ffdl_learner *l = adopt(&b, &rb, ra.pid, a.log, ra.offset, ra.exit_path);
  ffdl_backend_kill(b.be, l, 60000);
  wait_for(&b, &rb.exits, 1);
  CHECK(rb.kind == FFDL_EXIT_SIGNAL && rb.sig == SIGTERM);
  CHECK(rb.n_lines == 0);
  CHECK(strcmp(read_file(ra.exit_path), "143") == 0);
  int status = 0;
  reap(ra.grandchild, &status);
  CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
  status = reap_child(ra.pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGTERM);
  rec_free(&ra);
  rec_free(&rb);
  teardown(&b);
  teardown(&a);
}

/* A PID that now belongs to something else (here: a session leader that
 * does not write the log) is reported as ended, and is not signalled. */
static void adopt_signals_nothing_when_the_pid_is_not_a_learner(void) {
  fixture f;
  setup(&f);
  write_file(f.log, "earlier\n");
  int pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    setsid();
    execl("/bin/sleep", "sleep", "300", (char *)NULL);
    _exit(127);
  }
  track(live_pids, pid, 1);
  char exit_path[160];
  snprintf(exit_path, sizeof exit_path, "%s/exit", f.dir);
  rec r = new_rec(&f);
  adopt(&f, &r, pid, f.log, 0, exit_path);
  wait_for(&f, &r.exits, 1);
  CHECK(r.n_lines == 1 && strcmp(r.lines[0], "earlier") == 0);
  CHECK(r.kind == FFDL_EXIT_SIGNAL && r.sig == SIGKILL);
  int status = 0;
  CHECK(waitpid(pid, &status, WNOHANG) == 0); /* untouched */
  CHECK(kill(pid, SIGKILL) == 0);
  CHECK(waitpid(pid, &status, 0) == pid);
  track(live_pids, pid, 0);
  rec_free(&r);
  teardown(&f);
}

static void adopt_refuses_what_it_cannot_watch(void) {
  fixture f;
  setup(&f);
  rec r = new_rec(&f);
  ffdl_learner *l = (ffdl_learner *)&r;
  char *err = NULL;
  int bad_pids[] = {0, 1, -5, (int)getpid()};
  for (int i = 0; i < 4; i++) {
    CHECK(ffdl_backend_adopt(f.be, bad_pids[i], NULL, 0, NULL, &callbacks, &r, &l, &err) ==
          FFDL_EINVALID);
    CHECK(l == NULL && err != NULL);
    free(err);
  }
  CHECK(ffdl_backend_adopt(f.be, 99999999, "/nonexistent-ffdl/log", 0, NULL, &callbacks, &r, &l,
                           &err) == FFDL_ENOENT);
  CHECK_CONTAINS(err, "/nonexistent-ffdl/log");
  free(err);
  CHECK(ffdl_backend_running(f.be) == 0);
  teardown(&f);
  CHECK(r.exits == 0);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"lines_arrive_in_order_and_are_logged", lines_arrive_in_order_and_are_logged},
      {"exit_codes_are_classified", exit_codes_are_classified},
      {"exit_codes_are_classified_without_wrapper", exit_codes_are_classified_without_wrapper},
      {"a_signal_is_classified", a_signal_is_classified},
      {"a_signal_is_classified_without_wrapper", a_signal_is_classified_without_wrapper},
      {"missing_command_fails_at_launch", missing_command_fails_at_launch},
      {"missing_log_directory_fails_at_launch", missing_log_directory_fails_at_launch},
      {"partial_last_line_arrives", partial_last_line_arrives},
      {"no_line_is_lost_after_exit", no_line_is_lost_after_exit},
      {"long_line_is_cut_at_64k", long_line_is_cut_at_64k},
      {"kill_escalates_after_grace", kill_escalates_after_grace},
      {"kill_reaches_grandchildren", kill_reaches_grandchildren},
      {"exit_kills_what_the_leader_left", exit_kills_what_the_leader_left},
      {"close_kills_running_learners", close_kills_running_learners},
      {"close_without_learners_is_immediate", close_without_learners_is_immediate},
      {"env_is_passed_whole", env_is_passed_whole},
      {"command_is_found_through_the_learners_path", command_is_found_through_the_learners_path},
      {"stdin_is_dev_null", stdin_is_dev_null},
      {"an_existing_log_is_not_replayed", an_existing_log_is_not_replayed},
      {"no_log_means_no_lines", no_log_means_no_lines},
      {"unwritable_exit_path_fails_at_launch", unwritable_exit_path_fails_at_launch},
      {"exit_file_holds_the_status", exit_file_holds_the_status},
      {"wrapper_leads_the_group", wrapper_leads_the_group},
      {"a_graceful_end_after_sigterm_is_recorded", a_graceful_end_after_sigterm_is_recorded},
      {"abandon_leaves_learners_running", abandon_leaves_learners_running},
      {"adopt_continues_where_the_last_backend_stopped",
       adopt_continues_where_the_last_backend_stopped},
      {"adopt_reports_a_learner_that_ended_unwatched",
       adopt_reports_a_learner_that_ended_unwatched},
      {"kill_of_an_adopted_learner_reaches_its_group",
       kill_of_an_adopted_learner_reaches_its_group},
      {"adopt_signals_nothing_when_the_pid_is_not_a_learner",
       adopt_signals_nothing_when_the_pid_is_not_a_learner},
      {"adopt_refuses_what_it_cannot_watch", adopt_refuses_what_it_cannot_watch},
      {NULL, NULL}};
  return run_tests(cases, argc, argv);
}
