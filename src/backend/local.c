/*
 * local.c: the local backend. A learner is a process group on this machine.
 * Owns: the learners' processes (spawned detached, so each one calls setsid
 * and leads its own session and process group), their stdout and stderr
 * pipes, the splitting of output into lines, one append-only log file per
 * learner, and the kill and drain timers.
 * Must not: know about jobs, policies or Lua; signal anything but its own
 * learners' process groups; block the loop beyond small appends to a local
 * log file.
 *
 * Lifetimes follow libuv's handle contract: a learner is freed in the close
 * callback of its last handle, after on_exit has returned; the backend is
 * freed after its last learner, and then ffdl_backend_close's callback runs.
 *
 * A learner ends when its leader has exited and both pipes are at EOF. When
 * the leader exits, whatever is left in its group is SIGKILLed, as a
 * container's processes die with its main process, so a background process
 * cannot hold the pipes open. A process that left the group (its own setsid)
 * may still hold them: after DRAIN_MS the pipes are closed without EOF.
 *
 * memory_limit_bytes is not enforced here. RLIMIT_AS would break runtimes
 * that reserve address space (CUDA, JVMs, Go), and a cgroup v2 limit needs a
 * delegated subtree with the memory controller enabled, which ffdl does not
 * set up (and this module must not move ffdl itself between cgroups).
 * FFDL_EXIT_OOM is reported when a learner died of a SIGKILL that ffdl did
 * not send (as a signal, or as a shell's exit code 137) while the kernel's
 * OOM-kill counter rose: memory.events of ffdl's own cgroup v2, which its
 * learners share, else the machine-wide /proc/vmstat. Otherwise a signal is
 * FFDL_EXIT_SIGNAL.
 */
#include "backend/backend.h"
#include "core/error.h"
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define LINE_MAX_BYTES (64 * 1024) /* a longer line is cut into pieces of this size */
#define DRAIN_MS 2000              /* how long pipes may stay open after the leader exits */
#define DEFAULT_PATH "/usr/bin:/bin"

typedef struct {
  uv_pipe_t pipe;
  size_t len; /* bytes of the current partial line at the start of buf */
  int eof;
  char buf[LINE_MAX_BYTES + 1]; /* +1: room for the NUL after a cut line */
} out_stream;

static out_stream *stream_of(void *pipe) {
  return (out_stream *)((char *)pipe - offsetof(out_stream, pipe));
}

struct ffdl_learner {
  ffdl_backend *be;
  ffdl_learner *prev, *next;
  uv_process_t proc;
  uv_timer_t timer;  /* SIGKILL after the grace; after the exit, the drain deadline */
  out_stream out[2]; /* the child's stdout and stderr */
  ffdl_learner_callbacks cb;
  void *ud;
  int log_fd; /* -1: no log */
  int pid;    /* also the process group id; 0 until spawned */
  int exited; /* the leader has exited */
  int sent_kill;
  int done;    /* on_exit ran, or launch failed: no callback follows */
  int pending; /* handles still closing */
  int log_warned;
  int64_t exit_status;
  int term_signal;
  long long oom_base; /* the OOM-kill counter at launch; -1: unknown */
};

struct ffdl_backend {
  uv_loop_t *loop;
  ffdl_learner *learners; /* every learner not yet freed */
  size_t running;         /* learners whose on_exit has not run */
  int closing;
  void (*close_cb)(void *ud);
  void *close_ud;
  char *oom_path; /* where the kernel counts OOM kills */
};

/* ---- small helpers --------------------------------------------------- */

/* Sets *err (caller frees) when ERR is not NULL and returns CODE. */
static int fail(char **err, int code, const char *fmt, ...) {
  va_list ap;
  char buf[1024];
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (err) *err = strdup(buf);
  return code;
}

static int code_of_uv(int uverr) {
  if (uverr == UV_ENOENT) return FFDL_ENOENT;
  if (uverr == UV_ENOMEM) return FFDL_ENOMEM;
  return FFDL_EIO;
}

/* Signals the learner's whole process group; never our own (pid 0). */
static void signal_group(ffdl_learner *l, int sig) {
  if (l->pid <= 0) return;
  if (sig == SIGKILL) l->sent_kill = 1;
  if (kill(-l->pid, sig) != 0 && errno != ESRCH)
    ffdl_log(FFDL_LOG_WARN, "learner %d: kill(-%d, %d): %s", l->pid, l->pid, sig, strerror(errno));
}

/* ---- OOM detection --------------------------------------------------- */

/* Where the kernel counts OOM kills for us (caller frees). */
static char *find_oom_counter(void) {
  char line[4096], path[4200] = "";
  FILE *f = fopen("/proc/self/cgroup", "r");
  while (f && fgets(line, sizeof line, f)) {
    if (strncmp(line, "0::", 3) != 0) continue;
    line[strcspn(line, "\n")] = '\0';
    snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.events", line + 3);
  }
  if (f) fclose(f);
  return strdup(*path && access(path, R_OK) == 0 ? path : "/proc/vmstat");
}

/* The "oom_kill N" counter, or -1 when the kernel does not keep one. */
static long long oom_kills(const ffdl_backend *be) {
  FILE *f = be->oom_path ? fopen(be->oom_path, "r") : NULL;
  char key[64];
  long long value, found = -1;
  while (f && found < 0 && fscanf(f, "%63s %lld", key, &value) == 2)
    if (strcmp(key, "oom_kill") == 0) found = value;
  if (f) fclose(f);
  return found;
}

static ffdl_exit_kind classify(const ffdl_learner *l) {
  int sigkill =
      l->term_signal == SIGKILL || (l->term_signal == 0 && l->exit_status == 128 + SIGKILL);
  if (sigkill && !l->sent_kill && l->oom_base >= 0 && oom_kills(l->be) > l->oom_base)
    return FFDL_EXIT_OOM;
  if (l->term_signal) return FFDL_EXIT_SIGNAL;
  return l->exit_status == 0 ? FFDL_EXIT_OK : FFDL_EXIT_CODE;
}

/* ---- PATH lookup ----------------------------------------------------- */

/* NAME's value in ENV (borrowed), or in our own environment when ENV is NULL. */
static const char *env_get(const char *const *env, const char *name) {
  size_t n = strlen(name);
  if (!env) return getenv(name);
  for (; *env; env++)
    if (strncmp(*env, name, n) == 0 && (*env)[n] == '=') return *env + n + 1;
  return NULL;
}

static int is_executable(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* FILE looked up in the learner's PATH (caller frees); NULL: not found. Done
 * here, not left to execvp in the child, so that the lookup does not depend on
 * the libuv version (1.44 happens to search the child's PATH, as it sets
 * environ before execvp) and a missing command fails at launch with a clear
 * message. Empty PATH entries (the working directory) are skipped. */
static char *search_path(const char *file, const char *path) {
  size_t flen = strlen(file);
  if (strchr(file, '/')) return strdup(file);
  while (*file && path && *path) {
    size_t dlen = strcspn(path, ":");
    char *cand = dlen ? malloc(dlen + flen + 2) : NULL;
    if (cand) {
      memcpy(cand, path, dlen);
      cand[dlen] = '/';
      memcpy(cand + dlen + 1, file, flen + 1);
      if (is_executable(cand)) return cand;
      free(cand);
    }
    path += dlen + (path[dlen] == ':');
  }
  return NULL;
}

/* ---- output: lines, log, callbacks ----------------------------------- */

static void append_log(ffdl_learner *l, const char *line, size_t len) {
  if (l->log_fd < 0) return;
  struct iovec iov[2] = {{(void *)line, len}, {"\n", 1}};
  if (writev(l->log_fd, iov, 2) == (ssize_t)len + 1 || l->log_warned) return;
  l->log_warned = 1;
  ffdl_log(FFDL_LOG_WARN, "learner %d: cannot append to its log: %s", l->pid, strerror(errno));
}

/* One line, NUL-terminated in place: LINE[LEN] is a consumed '\n' or spare room. */
static void emit(ffdl_learner *l, char *line, size_t len) {
  line[len] = '\0';
  append_log(l, line, len);
  if (l->cb.on_line) l->cb.on_line(l->ud, l, line, len);
}

static void split_lines(ffdl_learner *l, out_stream *s, size_t n) {
  size_t start = 0, scan = s->len, end = s->len + n;
  char *nl;
  while ((nl = memchr(s->buf + scan, '\n', end - scan))) {
    size_t at = (size_t)(nl - s->buf);
    emit(l, s->buf + start, at - start);
    start = scan = at + 1;
  }
  s->len = end - start;
  memmove(s->buf, s->buf + start, s->len);
  if (s->len == LINE_MAX_BYTES) { /* too long: cut here */
    emit(l, s->buf, s->len);
    s->len = 0;
  }
}

static void on_handle_closed(uv_handle_t *h);

static void close_handles(ffdl_learner *l) {
  l->pending = 4;
  uv_close((uv_handle_t *)&l->proc, on_handle_closed);
  uv_close((uv_handle_t *)&l->timer, on_handle_closed);
  uv_close((uv_handle_t *)&l->out[0].pipe, on_handle_closed);
  uv_close((uv_handle_t *)&l->out[1].pipe, on_handle_closed);
}

/* on_exit, once: after the leader's exit and EOF on both pipes. */
static void maybe_finish(ffdl_learner *l) {
  if (l->done || !l->exited || !l->out[0].eof || !l->out[1].eof) return;
  l->done = 1;
  uv_timer_stop(&l->timer);
  l->be->running--;
  if (l->cb.on_exit) l->cb.on_exit(l->ud, l, classify(l), (int)l->exit_status, l->term_signal);
  close_handles(l);
}

static void end_stream(ffdl_learner *l, out_stream *s) {
  if (s->eof) return;
  if (s->len) emit(l, s->buf, s->len); /* a last line without its newline */
  s->len = 0;
  s->eof = 1;
  uv_read_stop((uv_stream_t *)&s->pipe);
  maybe_finish(l);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  out_stream *s = stream_of(h);
  *buf = uv_buf_init(s->buf + s->len, (unsigned)(LINE_MAX_BYTES - s->len));
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf) {
  ffdl_learner *l = st->data;
  if (n > 0)
    split_lines(l, stream_of(st), (size_t)n);
  else if (n < 0)
    end_stream(l, stream_of(st)); /* UV_EOF, or a read error */
}

/* ---- process lifetime ------------------------------------------------ */

static void on_drain_timeout(uv_timer_t *t) {
  ffdl_learner *l = t->data;
  ffdl_log(FFDL_LOG_WARN, "learner %d: output still open %d ms after exit; closing it", l->pid,
           DRAIN_MS);
  end_stream(l, &l->out[0]);
  end_stream(l, &l->out[1]);
}

static void on_proc_exit(uv_process_t *p, int64_t exit_status, int term_signal) {
  ffdl_learner *l = p->data;
  l->exited = 1;
  l->exit_status = exit_status;
  l->term_signal = term_signal;
  /* Stragglers in the group die with the leader. The group id cannot be reused
   * while a member lives, and the leader was reaped just now. */
  if (kill(-l->pid, SIGKILL) != 0 && errno != ESRCH)
    ffdl_log(FFDL_LOG_WARN, "learner %d: kill group: %s", l->pid, strerror(errno));
  uv_timer_start(&l->timer, on_drain_timeout, DRAIN_MS, 0); /* replaces a kill timer */
  maybe_finish(l);
}

static void on_grace_over(uv_timer_t *t) {
  ffdl_learner *l = t->data;
  if (!l->exited) signal_group(l, SIGKILL);
}

static void backend_free(ffdl_backend *be) {
  void (*cb)(void *ud) = be->close_cb;
  void *ud = be->close_ud;
  free(be->oom_path);
  free(be);
  if (cb) cb(ud);
}

static void learner_free(ffdl_learner *l) {
  ffdl_backend *be = l->be;
  if (l->prev)
    l->prev->next = l->next;
  else
    be->learners = l->next;
  if (l->next) l->next->prev = l->prev;
  if (l->log_fd >= 0) close(l->log_fd);
  free(l);
  if (be->closing && !be->learners) backend_free(be);
}

static void on_handle_closed(uv_handle_t *h) {
  ffdl_learner *l = h->data;
  if (--l->pending == 0) learner_free(l);
}

/* ---- launch ---------------------------------------------------------- */

/* A learner with its log open, linked into BE; no handles yet. */
static int learner_new(ffdl_backend *be, const ffdl_launch_spec *spec,
                       const ffdl_learner_callbacks *cb, void *ud, ffdl_learner **out, char **err) {
  const char *name = spec->argv[0];
  ffdl_learner *l = calloc(1, sizeof *l);
  if (!l) return fail(err, FFDL_ENOMEM, "cannot start \"%s\": out of memory", name);
  l->log_fd = -1;
  if (spec->log_path) {
    l->log_fd = open(spec->log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (l->log_fd < 0) {
      int rc = fail(err, FFDL_EIO, "cannot start \"%s\": cannot open its log %s: %s", name,
                    spec->log_path, strerror(errno));
      free(l);
      return rc;
    }
  }
  l->be = be;
  l->cb = *cb;
  l->ud = ud;
  l->next = be->learners;
  if (l->next) l->next->prev = l;
  be->learners = l;
  *out = l;
  return FFDL_OK;
}

/* On Unix these inits cannot fail (libuv returns 0). */
static void init_handles(ffdl_learner *l) {
  uv_loop_t *loop = l->be->loop;
  uv_timer_init(loop, &l->timer);
  uv_pipe_init(loop, &l->out[0].pipe, 0);
  uv_pipe_init(loop, &l->out[1].pipe, 0);
  l->proc.data = l->timer.data = l->out[0].pipe.data = l->out[1].pipe.data = l;
}

/* stdin is /dev/null (libuv's UV_IGNORE for fds 0-2); stdout and stderr are pipes. */
static int spawn(ffdl_learner *l, const ffdl_launch_spec *spec, const char *file) {
  uv_stdio_container_t stdio[3] = {
      {.flags = UV_IGNORE},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&l->out[0].pipe},
      {.flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE, .data.stream = (uv_stream_t *)&l->out[1].pipe},
  };
  uv_process_options_t o = {.exit_cb = on_proc_exit,
                            .file = file,
                            .args = (char **)spec->argv,
                            .env = (char **)spec->env,
                            .cwd = spec->cwd,
                            .flags = UV_PROCESS_DETACHED,
                            .stdio_count = 3,
                            .stdio = stdio};
  return uv_spawn(l->be->loop, &l->proc, &o);
}

static void start_reading(ffdl_learner *l) {
  for (int i = 0; i < 2; i++)
    if (uv_read_start((uv_stream_t *)&l->out[i].pipe, on_alloc, on_read) != 0) l->out[i].eof = 1;
}

/* Spawns L; on failure its handles close and it is freed without a callback. */
static int start(ffdl_learner *l, const ffdl_launch_spec *spec, const char *file, char **err) {
  init_handles(l);
  int rc = spawn(l, spec, file);
  if (rc != 0) { /* uv_spawn's contract: the process handle is closed even so */
    l->done = 1;
    close_handles(l);
    return fail(err, code_of_uv(rc), "cannot start \"%s\"%s%s: %s", spec->argv[0],
                spec->cwd ? " in " : "", spec->cwd ? spec->cwd : "", uv_strerror(rc));
  }
  l->pid = l->proc.pid;
  l->oom_base = oom_kills(l->be);
  l->be->running++;
  start_reading(l);
  if (spec->memory_limit_bytes)
    ffdl_log(FFDL_LOG_DEBUG, "learner %d: memory limit %llu not enforced by the local backend",
             l->pid, (unsigned long long)spec->memory_limit_bytes);
  return FFDL_OK;
}

int ffdl_backend_launch(ffdl_backend *be, const ffdl_launch_spec *spec,
                        const ffdl_learner_callbacks *cb, void *ud, ffdl_learner **out,
                        char **err) {
  *out = NULL;
  if (err) *err = NULL;
  if (!spec->argv || !spec->argv[0]) return fail(err, FFDL_EINVALID, "no command to start");
  const char *name = spec->argv[0];
  if (be->closing) return fail(err, FFDL_EINVALID, "cannot start \"%s\": closing", name);
  const char *path = env_get(spec->env, "PATH");
  char *file = search_path(name, path ? path : DEFAULT_PATH);
  if (!file)
    return fail(err, FFDL_ENOENT, "cannot start \"%s\": command not found in PATH \"%s\"", name,
                path ? path : DEFAULT_PATH);
  ffdl_learner *l = NULL;
  int rc = learner_new(be, spec, cb, ud, &l, err);
  if (rc == FFDL_OK) rc = start(l, spec, file, err);
  free(file);
  if (rc == FFDL_OK) *out = l;
  return rc;
}

/* ---- control --------------------------------------------------------- */

void ffdl_backend_kill(ffdl_backend *be, ffdl_learner *learner, unsigned grace_ms) {
  ffdl_learner *l = learner;
  if (!l || l->exited || l->done) return; /* already gone: nothing to do */
  if (grace_ms == 0) {
    signal_group(l, SIGKILL);
    return;
  }
  signal_group(l, SIGTERM);
  signal_group(l, SIGCONT); /* a stopped group must see its SIGTERM */
  if (!uv_is_active((uv_handle_t *)&l->timer) || uv_timer_get_due_in(&l->timer) > grace_ms)
    uv_timer_start(&l->timer, on_grace_over, grace_ms, 0);
}

int ffdl_learner_pid(const ffdl_learner *learner) {
  return learner->pid;
}

int ffdl_backend_local_new(uv_loop_t *loop, ffdl_backend **out) {
  *out = NULL;
  ffdl_backend *be = calloc(1, sizeof *be);
  if (!be) return FFDL_ENOMEM;
  be->loop = loop;
  be->oom_path = find_oom_counter();
  *out = be;
  return FFDL_OK;
}

void ffdl_backend_close(ffdl_backend *be, void (*cb)(void *ud), void *ud) {
  if (be->closing) return;
  be->closing = 1;
  be->close_cb = cb;
  be->close_ud = ud;
  for (ffdl_learner *l = be->learners; l; l = l->next)
    if (!l->exited && !l->done) signal_group(l, SIGKILL);
  if (!be->learners) backend_free(be);
}

size_t ffdl_backend_running(const ffdl_backend *be) {
  return be->running;
}

/* TEMPORARY until the file-output backend lands: adoption is refused. */
int ffdl_backend_adopt(ffdl_backend *be, int pid, const char *log_path, uint64_t log_offset,
                       const char *exit_path, const ffdl_learner_callbacks *cb, void *ud,
                       ffdl_learner **out, char **err) {
  (void)be, (void)pid, (void)log_path, (void)log_offset, (void)exit_path, (void)cb, (void)ud;
  *out = NULL;
  *err = strdup("adoption is not available in this backend yet");
  return FFDL_EINVALID;
}

void ffdl_backend_abandon(ffdl_backend *be) {
  (void)be;
}
