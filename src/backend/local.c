/*
 * local.c: the local backend. A learner is a process group on this machine.
 * Owns: the learners' processes (spawned detached, so each one calls setsid
 * and leads its own session and process group), the exit-status wrapper, the
 * tailing of each learner's log file and its splitting into lines, the
 * polling of adopted learners, and the kill timers.
 * Must not: know about jobs, policies or Lua; signal anything but its own
 * learners' process groups; write to a learner's log; block the loop beyond
 * small reads of a local log file.
 *
 * Lifetimes follow libuv's handle contract: a learner is freed in the close
 * callback of its last handle, after on_exit has returned (or after the
 * backend was abandoned); the backend is freed after its last learner, and
 * then ffdl_backend_close's callback runs.
 *
 * Output. The learner's stdout and stderr are one O_APPEND descriptor of its
 * log file, so output survives us: no pipe breaks, and nobody dies of SIGPIPE
 * when this process does. Lines are read back by tailing the file from an
 * offset, woken by inotify (uv_fs_event) and, as a fallback, every TICK_MS.
 * The reads are plain pread(2) calls on the loop thread: a local regular file,
 * read forwards in chunks of at most 64 KiB, READ_BUDGET bytes per turn, costs
 * less than a round trip to the thread pool would.
 *
 * Exit status. With an exit_path the learner runs under WRAPPER, a /bin/sh
 * that stays the group and session leader, runs the learner as its child and
 * writes $? to exit_path (tmp file, then rename) once it ends; a later ffdl
 * process can read it even if none was alive then. The wrapper catches
 * SIGTERM, SIGINT and SIGHUP with a no-op trap: a signal to the group reaches
 * the learner (caught signals are reset to the default on exec, so the
 * learner's own dispositions are untouched), and the wrapper, which runs a
 * trap only once its foreground child has ended, outlives the learner's
 * graceful shutdown and records how it ended. SIGKILL kills it with the
 * group; then there is no file.
 *
 * A learner ends when its leader has exited: for our children, libuv's exit
 * callback; for adopted learners (not our children), a poll every TICK_MS of
 * /proc/PID/stat (gone, or a zombie). Whatever is left in the group is then
 * SIGKILLed, as a container's processes die with its main process, the log
 * is read to its end, and on_exit runs.
 *
 * memory_limit_bytes is not enforced here. RLIMIT_AS would break runtimes
 * that reserve address space (CUDA, JVMs, Go), and a cgroup v2 limit needs a
 * delegated subtree with the memory controller enabled, which ffdl does not
 * set up (and this module must not move ffdl itself between cgroups).
 * FFDL_EXIT_OOM is reported when a learner we launched died of a SIGKILL that
 * ffdl did not send (as a signal, or as a shell's exit code 137) while the
 * kernel's OOM-kill counter rose: memory.events of ffdl's own cgroup v2, which
 * its learners share, else the machine-wide /proc/vmstat. Otherwise a signal
 * is FFDL_EXIT_SIGNAL. Adopted learners have no baseline: never OOM.
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
#include <unistd.h>

#define LINE_MAX_BYTES (64 * 1024) /* a longer line is cut into pieces of this size */
#define TICK_MS 100                /* log tail fallback; liveness poll of adopted learners */
#define READ_BUDGET (1024 * 1024)  /* log bytes read per turn of the loop and learner */
#define MAX_SIGNAL 64              /* 128+N up to here is "killed by signal N" */
#define DEFAULT_PATH "/usr/bin:/bin"
#define WRAPPER_SHELL "/bin/sh"

/* $1: the exit file; then the learner's argv (argv[0] already resolved). The
 * learner runs in a subshell that execs it: a child of the wrapper, never
 * exec'd over it, as the wrapper must outlive it. The wrapper's own stderr is
 * /dev/null, so that its "Killed" or "Terminated" about the learner stays out
 * of the log; the learner gets the real one back from fd 3. `command -p`
 * finds mv without the learner's PATH. */
static const char WRAPPER[] =
    "trap : TERM INT HUP; p=$1; shift; exec 3>&2 2>/dev/null; ( exec \"$@\" 2>&3 3>&- ); "
    "s=$?; printf %s \"$s\" >\"$p.tmp\" && command -p mv -f \"$p.tmp\" \"$p\"; exit \"$s\"";

struct ffdl_learner {
  ffdl_backend *be;
  ffdl_learner *prev, *next;
  uv_process_t proc;   /* launched learners only */
  uv_timer_t kill;     /* SIGKILL after the grace */
  uv_timer_t tick;     /* every TICK_MS: tail the log; adopted: is the leader alive? */
  uv_fs_event_t watch; /* wakes the tail when the log changes */
  ffdl_learner_callbacks cb;
  void *ud;
  int log_fd;        /* read side of the log; -1: no log */
  char *exit_path;   /* adopted: where the status is (owned); NULL: none */
  uint64_t base;     /* log offset of buf[0] */
  uint64_t reported; /* log offset past the last reported line */
  size_t len;        /* bytes of the current partial line at the start of buf */
  int pid;           /* also the process group id; 0 until spawned */
  int launched;      /* proc was handed to uv_spawn */
  int adopted;
  int wrapped;   /* launched under WRAPPER: 128+N is signal N */
  int exited;    /* the leader has exited */
  int sent_kill; /* we sent SIGKILL */
  int done;      /* on_exit ran, launch failed, or abandoned: no callback follows */
  int closing;   /* handles are closing */
  int pending;   /* handles still closing */
  int read_warned;
  int64_t exit_status; /* what the leader's exit said */
  int term_signal;
  long long oom_base;           /* the OOM-kill counter at launch; -1: unknown */
  char buf[LINE_MAX_BYTES + 1]; /* +1: room for the NUL after a cut line */
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

static int code_of_errno(int e) {
  if (e == ENOENT) return FFDL_ENOENT;
  if (e == ENOMEM) return FFDL_ENOMEM;
  return FFDL_EIO;
}

/* PATH made absolute against our working directory (caller frees); NULL: no memory. */
static char *absolute(const char *path) {
  char cwd[4096];
  if (path[0] == '/' || !getcwd(cwd, sizeof cwd)) return strdup(path);
  size_t n = strlen(cwd) + strlen(path) + 2;
  char *out = malloc(n);
  if (out) snprintf(out, n, "%s/%s", cwd, path);
  return out;
}

/* Signals the learner's whole process group; never our own, never pid 1's. */
static void signal_group(ffdl_learner *l, int sig) {
  if (l->pid <= 1) return;
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

/* ---- exit status ----------------------------------------------------- */

/* A shell-style status (exit_path's format) as exit_status and term_signal. */
static void set_shell_status(ffdl_learner *l, long status) {
  l->exit_status = status;
  l->term_signal = 0;
  if (status > 128 && status <= 128 + MAX_SIGNAL) {
    l->exit_status = 0;
    l->term_signal = (int)(status - 128);
  }
}

/* An adopted learner's status, from its exit file; none: SIGKILL. */
static void read_exit_file(ffdl_learner *l) {
  char text[32] = "", *end;
  l->exit_status = 0;
  l->term_signal = SIGKILL;
  int fd = l->exit_path ? open(l->exit_path, O_RDONLY | O_CLOEXEC) : -1;
  if (fd < 0) return; /* the wrapper died with its group, or there is none */
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  text[n > 0 ? n : 0] = '\0';
  errno = 0;
  long status = strtol(text, &end, 10);
  if (end == text || errno || (*end && *end != '\n') || status < 0 || status > 255) {
    ffdl_log(FFDL_LOG_WARN, "learner %d: %s does not hold an exit status (\"%s\"); taken as killed",
             l->pid, l->exit_path, text);
    return;
  }
  set_shell_status(l, status);
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

/* ---- output: tail the log, split lines, callbacks --------------------- */

/* buf[START, START+LEN) is a line that ends before log offset END; buf[START+LEN]
 * is its consumed '\n' or spare room, and becomes its NUL. */
static void emit(ffdl_learner *l, size_t start, size_t len, uint64_t end) {
  l->buf[start + len] = '\0';
  l->reported = end;
  if (l->cb.on_line) l->cb.on_line(l->ud, l, l->buf + start, len);
}

/* N new bytes arrived after the partial line. Stops once the learner is done
 * (abandoned from on_line): nothing is reported after that. */
static void split_lines(ffdl_learner *l, size_t n) {
  size_t start = 0, scan = l->len, end = l->len + n;
  char *nl;
  while (!l->done && (nl = memchr(l->buf + scan, '\n', end - scan))) {
    size_t at = (size_t)(nl - l->buf);
    emit(l, start, at - start, l->base + at + 1);
    start = scan = at + 1;
  }
  if (l->done) return;
  l->len = end - start;
  l->base += start;
  memmove(l->buf, l->buf + start, l->len);
  if (l->len == LINE_MAX_BYTES) { /* too long: cut here */
    emit(l, 0, l->len, l->base + l->len);
    l->base += l->len;
    l->len = 0;
  }
}

/* Reads what is new in the log, at most READ_BUDGET bytes. Returns 1 when it
 * reached the end of the file (or cannot read it), 0 when more is waiting. */
static int tail(ffdl_learner *l) {
  size_t budget = READ_BUDGET;
  while (l->log_fd >= 0 && !l->done) {
    uint64_t at = l->base + l->len;
    ssize_t n = pread(l->log_fd, l->buf + l->len, LINE_MAX_BYTES - l->len, (off_t)at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      if (!l->read_warned)
        ffdl_log(FFDL_LOG_WARN, "learner %d: cannot read its log: %s", l->pid, strerror(errno));
      l->read_warned = 1;
      return 1;
    }
    if (n == 0) return 1;
    split_lines(l, (size_t)n);
    if ((size_t)n >= budget) return 0;
    budget -= (size_t)n;
  }
  return 1;
}

static void on_handle_closed(uv_handle_t *h);

/* Closes L's handles once; L is freed when the last one has closed. */
static void close_handles(ffdl_learner *l) {
  if (l->closing) return;
  l->closing = 1;
  l->pending = 3 + l->launched;
  if (l->launched) uv_close((uv_handle_t *)&l->proc, on_handle_closed);
  uv_close((uv_handle_t *)&l->kill, on_handle_closed);
  uv_close((uv_handle_t *)&l->tick, on_handle_closed);
  uv_close((uv_handle_t *)&l->watch, on_handle_closed);
}

/* on_exit, once: the leader has exited and the log was read to its end. */
static void finish(ffdl_learner *l) {
  if (l->len) emit(l, 0, l->len, l->base + l->len); /* a last line without its newline */
  if (l->done) return;                              /* abandoned from that on_line */
  l->base += l->len;
  l->len = 0;
  l->done = 1;
  uv_timer_stop(&l->kill);
  uv_timer_stop(&l->tick);
  l->be->running--;
  if (l->adopted) read_exit_file(l);
  if (l->cb.on_exit) l->cb.on_exit(l->ud, l, classify(l), (int)l->exit_status, l->term_signal);
  close_handles(l);
}

static void on_tick(uv_timer_t *t);

/* Reads the log; once the leader has exited and the log is read to its end,
 * finishes. More than a turn's worth waiting: comes back at once. */
static void pump(ffdl_learner *l) {
  if (l->done) return;
  int at_end = tail(l);
  if (l->done) return;
  if (!at_end)
    uv_timer_start(&l->tick, on_tick, 0, TICK_MS);
  else if (l->exited)
    finish(l);
}

/* The leader exited: what is left of its group dies with it. Only while the
 * group id cannot have been reused: the leader was reaped (or found dead)
 * just now, and a live member keeps the id reserved. */
static void leader_exited(ffdl_learner *l) {
  l->exited = 1;
  uv_timer_stop(&l->kill);
  if (kill(-l->pid, SIGKILL) != 0 && errno != ESRCH)
    ffdl_log(FFDL_LOG_WARN, "learner %d: kill group: %s", l->pid, strerror(errno));
}

typedef enum { LEADER_ALIVE, LEADER_GONE, LEADER_FOREIGN } leader_state;

/* Whether PID still is the leader we adopted. A zombie has ended; a live
 * process that does not lead its own session is not one of our learners (its
 * pid was reused). Where /proc cannot tell, kill(pid, 0) decides. */
static leader_state leader_of(int pid) {
  char path[64], text[512];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return kill(pid, 0) == -1 && errno == ESRCH ? LEADER_GONE : LEADER_ALIVE;
  ssize_t n = read(fd, text, sizeof text - 1);
  close(fd);
  text[n > 0 ? n : 0] = '\0';
  const char *rp = strrchr(text, ')'); /* the command name may hold anything */
  char state = 0;
  int ppid = 0, pgrp = 0, session = 0;
  if (n <= 0) return LEADER_GONE; /* it went away between open and read */
  if (!rp || sscanf(rp + 1, " %c %d %d %d", &state, &ppid, &pgrp, &session) != 4)
    return LEADER_ALIVE;
  if (state == 'Z' || state == 'X') return LEADER_GONE;
  return session == pid && pgrp == pid ? LEADER_ALIVE : LEADER_FOREIGN;
}

/* Whether PID's stdout or stderr is the log open at LOG_FD (the wrapper's
 * never change). Unknowable (another user's process): no. */
static int writes_log(int pid, int log_fd) {
  struct stat log, out;
  char path[64];
  if (fstat(log_fd, &log) != 0) return 1;
  for (int fd = 1; fd <= 2; fd++) {
    snprintf(path, sizeof path, "/proc/%d/fd/%d", pid, fd);
    if (stat(path, &out) == 0 && out.st_dev == log.st_dev && out.st_ino == log.st_ino) return 1;
  }
  return 0;
}

static void on_tick(uv_timer_t *t) {
  ffdl_learner *l = t->data;
  if (l->adopted && !l->exited) {
    leader_state s = leader_of(l->pid);
    if (s == LEADER_GONE) leader_exited(l);
    if (s == LEADER_FOREIGN) l->exited = 1; /* not ours any more: signal nothing */
  }
  pump(l);
}

static void on_log_changed(uv_fs_event_t *w, const char *filename, int events, int status) {
  (void)filename, (void)events;
  if (status == 0) pump(w->data);
}

static void on_proc_exit(uv_process_t *p, int64_t exit_status, int term_signal) {
  ffdl_learner *l = p->data;
  if (l->wrapped && term_signal == 0)
    set_shell_status(l, (long)exit_status); /* the learner's status, as the wrapper saw it */
  else {
    l->exit_status = exit_status;
    l->term_signal = term_signal;
  }
  leader_exited(l);
  pump(l);
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
  free(l->exit_path);
  free(l);
  if (be->closing && !be->learners) backend_free(be);
}

static void on_handle_closed(uv_handle_t *h) {
  ffdl_learner *l = h->data;
  if (--l->pending == 0) learner_free(l);
}

/* ---- launch and adopt ------------------------------------------------ */

/* A learner linked into BE, reading LOG_FD (taken; -1: none) from OFFSET,
 * with its timers and log watch initialized but not started. */
static ffdl_learner *learner_new(ffdl_backend *be, int log_fd, uint64_t offset,
                                 const ffdl_learner_callbacks *cb, void *ud) {
  ffdl_learner *l = calloc(1, sizeof *l);
  if (!l) {
    if (log_fd >= 0) close(log_fd);
    return NULL;
  }
  l->be = be;
  l->cb = *cb;
  l->ud = ud;
  l->log_fd = log_fd;
  l->base = l->reported = offset;
  l->oom_base = -1;
  l->next = be->learners;
  if (l->next) l->next->prev = l;
  be->learners = l;
  /* On Linux these inits cannot fail (libuv returns 0). */
  uv_timer_init(be->loop, &l->kill);
  uv_timer_init(be->loop, &l->tick);
  uv_fs_event_init(be->loop, &l->watch);
  l->proc.data = l->kill.data = l->tick.data = l->watch.data = l;
  return l;
}

/* Starts tailing LOG_PATH: inotify when it can, the tick always. */
static void start_tail(ffdl_learner *l, const char *log_path, uint64_t first_tick_ms) {
  if (log_path && l->log_fd >= 0) {
    int rc = uv_fs_event_start(&l->watch, on_log_changed, log_path, 0);
    if (rc != 0)
      ffdl_log(FFDL_LOG_DEBUG, "learner %d: no inotify on %s (%s): polling every %d ms", l->pid,
               log_path, uv_strerror(rc), TICK_MS);
  }
  uv_timer_start(&l->tick, on_tick, first_tick_ms, TICK_MS);
}

/* The learner's log, opened twice: WR_FD (O_APPEND) for the child, and a
 * reading descriptor returned in *RD_FD with the file's size in *SIZE. */
static int open_log(const char *name, const char *path, int *wr_fd, int *rd_fd, uint64_t *size,
                    char **err) {
  struct stat st;
  *wr_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  *rd_fd = *wr_fd < 0 ? -1 : open(path, O_RDONLY | O_CLOEXEC);
  if (*rd_fd >= 0 && fstat(*rd_fd, &st) == 0) {
    *size = (uint64_t)st.st_size;
    return FFDL_OK;
  }
  int e = errno;
  if (*wr_fd >= 0) close(*wr_fd);
  if (*rd_fd >= 0) close(*rd_fd);
  *wr_fd = *rd_fd = -1;
  return fail(err, code_of_errno(e), "cannot start \"%s\": cannot open its log %s: %s", name, path,
              strerror(e));
}

/* Removes what an earlier run left at PATH, and checks that the wrapper will
 * be able to write PATH.tmp (the rename needs the same directory). */
static int prepare_exit_file(const char *name, const char *path, char **err) {
  size_t n = strlen(path) + sizeof ".tmp";
  char *tmp = malloc(n);
  if (!tmp) return fail(err, FFDL_ENOMEM, "cannot start \"%s\": out of memory", name);
  snprintf(tmp, n, "%s.tmp", path);
  int rc = FFDL_OK, fd = -1;
  if (unlink(path) != 0 && errno != ENOENT)
    rc = fail(err, FFDL_EIO, "cannot start \"%s\": cannot remove the old exit status %s: %s", name,
              path, strerror(errno));
  else if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
    rc = fail(err, code_of_errno(errno),
              "cannot start \"%s\": cannot write its exit status to %s: %s", name, path,
              strerror(errno));
  if (fd >= 0) {
    close(fd);
    unlink(tmp);
  }
  free(tmp);
  return rc;
}

/* argv for uv_spawn (caller frees the array, not the strings): the learner's
 * own with FILE as argv[0], or, with EXIT_PATH, the wrapper running it. */
static char **spawn_argv(const ffdl_launch_spec *spec, const char *file, const char *exit_path) {
  size_t n = 0, k = 0;
  while (spec->argv[n])
    n++;
  char **argv = calloc(n + 6, sizeof *argv);
  if (!argv) return NULL;
  if (exit_path) {
    argv[k++] = (char *)WRAPPER_SHELL;
    argv[k++] = (char *)"-c";
    argv[k++] = (char *)WRAPPER;
    argv[k++] = (char *)"ffdl-learner"; /* the wrapper's $0 */
    argv[k++] = (char *)exit_path;
    argv[k++] = (char *)file; /* resolved: the wrapper must not search another PATH */
  } else {
    argv[k++] = (char *)spec->argv[0];
  }
  for (size_t i = 1; i < n; i++)
    argv[k++] = (char *)spec->argv[i];
  return argv;
}

/* stdin is /dev/null (libuv's UV_IGNORE for fds 0-2); stdout and stderr are
 * LOG_FD, or /dev/null too without a log. */
static int spawn(ffdl_learner *l, const ffdl_launch_spec *spec, const char *file, char **argv,
                 int log_fd) {
  uv_stdio_container_t out = {.flags = UV_INHERIT_FD, .data.fd = log_fd};
  uv_stdio_container_t none = {.flags = UV_IGNORE};
  uv_stdio_container_t stdio[3] = {none, log_fd >= 0 ? out : none, log_fd >= 0 ? out : none};
  uv_process_options_t o = {.exit_cb = on_proc_exit,
                            .file = l->wrapped ? WRAPPER_SHELL : file,
                            .args = argv,
                            .env = (char **)spec->env,
                            .cwd = spec->cwd,
                            .flags = UV_PROCESS_DETACHED,
                            .stdio_count = 3,
                            .stdio = stdio};
  l->launched = 1;
  return uv_spawn(l->be->loop, &l->proc, &o);
}

/* Spawns L; on failure its handles close and it is freed without a callback. */
static int start(ffdl_learner *l, const ffdl_launch_spec *spec, const char *file,
                 const char *exit_path, int log_fd, char **err) {
  const char *name = spec->argv[0];
  char **argv = spawn_argv(spec, file, exit_path);
  int rc = argv ? spawn(l, spec, file, argv, log_fd) : UV_ENOMEM;
  free(argv);
  if (rc != 0) { /* uv_spawn's contract: the process handle is closed even so */
    l->done = 1;
    close_handles(l);
    return fail(err, code_of_uv(rc), "cannot start \"%s\"%s%s: %s", name, spec->cwd ? " in " : "",
                spec->cwd ? spec->cwd : "", uv_strerror(rc));
  }
  l->pid = l->proc.pid;
  l->oom_base = oom_kills(l->be);
  l->be->running++;
  start_tail(l, spec->log_path, TICK_MS);
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
  char *exit_path = spec->exit_path ? absolute(spec->exit_path) : NULL;
  int wr_fd = -1, rd_fd = -1, rc = FFDL_OK;
  uint64_t size = 0;
  if (spec->exit_path && !exit_path)
    rc = fail(err, FFDL_ENOMEM, "cannot start \"%s\": out of memory", name);
  if (rc == FFDL_OK && exit_path) rc = prepare_exit_file(name, exit_path, err);
  if (rc == FFDL_OK && spec->log_path)
    rc = open_log(name, spec->log_path, &wr_fd, &rd_fd, &size, err);
  ffdl_learner *l = NULL;
  if (rc == FFDL_OK && !(l = learner_new(be, rd_fd, size, cb, ud)))
    rc = fail(err, FFDL_ENOMEM, "cannot start \"%s\": out of memory", name);
  if (rc == FFDL_OK) {
    l->wrapped = exit_path != NULL;
    rc = start(l, spec, file, exit_path, wr_fd, err);
  }
  if (wr_fd >= 0) close(wr_fd); /* the child has its own copy now */
  free(exit_path);
  free(file);
  if (rc == FFDL_OK) *out = l;
  return rc;
}

int ffdl_backend_adopt(ffdl_backend *be, int pid, const char *log_path, uint64_t log_offset,
                       const char *exit_path, const ffdl_learner_callbacks *cb, void *ud,
                       ffdl_learner **out, char **err) {
  *out = NULL;
  if (err) *err = NULL;
  if (pid <= 1 || pid == getpid() || pid == getpgrp())
    return fail(err, FFDL_EINVALID, "cannot adopt process %d: not a learner's process group", pid);
  if (be->closing) return fail(err, FFDL_EINVALID, "cannot adopt process %d: closing", pid);
  int log_fd = log_path ? open(log_path, O_RDONLY | O_CLOEXEC) : -1;
  if (log_path && log_fd < 0)
    return fail(err, code_of_errno(errno), "cannot adopt process %d: cannot open its log %s: %s",
                pid, log_path, strerror(errno));
  char *exit_copy = exit_path ? absolute(exit_path) : NULL;
  if (exit_path && !exit_copy && log_fd >= 0) close(log_fd);
  ffdl_learner *l = exit_path && !exit_copy ? NULL : learner_new(be, log_fd, log_offset, cb, ud);
  if (!l) { /* learner_new closed LOG_FD */
    free(exit_copy);
    return fail(err, FFDL_ENOMEM, "cannot adopt process %d: out of memory", pid);
  }
  l->pid = pid;
  l->adopted = 1;
  l->exit_path = exit_copy;
  be->running++;
  /* Ended already? Its exit file is the surest sign (PIDs get reused). */
  leader_state s = exit_copy && access(exit_copy, F_OK) == 0 ? LEADER_FOREIGN : leader_of(pid);
  if (s == LEADER_ALIVE && exit_copy && log_fd >= 0 && !writes_log(pid, log_fd))
    s = LEADER_FOREIGN; /* the wrapper's output would be this log */
  if (s == LEADER_FOREIGN) ffdl_log(FFDL_LOG_DEBUG, "learner %d: ended before it was adopted", pid);
  l->exited = s != LEADER_ALIVE;                 /* and its group's leftovers are left alone */
  start_tail(l, l->exited ? NULL : log_path, 0); /* the first read: from the loop, at once */
  *out = l;
  return FFDL_OK;
}

/* ---- control --------------------------------------------------------- */

void ffdl_backend_kill(ffdl_backend *be, ffdl_learner *learner, unsigned grace_ms) {
  (void)be;
  ffdl_learner *l = learner;
  if (!l || l->exited || l->done) return; /* already gone: nothing to do */
  if (grace_ms == 0) {
    signal_group(l, SIGKILL);
    return;
  }
  signal_group(l, SIGTERM);
  signal_group(l, SIGCONT); /* a stopped group must see its SIGTERM */
  if (!uv_is_active((uv_handle_t *)&l->kill) || uv_timer_get_due_in(&l->kill) > grace_ms)
    uv_timer_start(&l->kill, on_grace_over, grace_ms, 0);
}

int ffdl_learner_pid(const ffdl_learner *learner) {
  return learner->pid;
}

uint64_t ffdl_learner_log_offset(const ffdl_learner *learner) {
  return learner->reported;
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

void ffdl_backend_abandon(ffdl_backend *be) {
  if (be->closing) return;
  be->closing = 1;
  be->close_cb = NULL;
  be->running = 0;
  for (ffdl_learner *l = be->learners; l; l = l->next) {
    l->done = 1; /* no callback from now on */
    close_handles(l);
  }
  if (!be->learners) backend_free(be);
}

size_t ffdl_backend_running(const ffdl_backend *be) {
  return be->running;
}
