/*
 * The backend interface: what the orchestrator needs from a place that runs
 * learners. The orchestrator never knows which backend it drives.
 */
#ifndef FFDL_BACKEND_BACKEND_H
#define FFDL_BACKEND_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct ffdl_backend ffdl_backend;
typedef struct ffdl_learner ffdl_learner;

typedef enum {
  FFDL_EXIT_OK,       /* exit code 0 */
  FFDL_EXIT_CODE,     /* a non-zero exit code */
  FFDL_EXIT_SIGNAL,   /* killed by a signal */
  FFDL_EXIT_OOM,      /* killed for memory (cgroup OOM, or SIGKILL past the memory limit) */
  FFDL_EXIT_NODE_LOST /* the node went away */
} ffdl_exit_kind;

typedef struct {
  /* One line of the learner's stdout or stderr, in the order the lines reach its
   * log file (both streams are that one file), without its newline and
   * NUL-terminated at LEN (borrowed: valid during the call). A line longer than
   * 64 KiB arrives in pieces of 64 KiB; a last line without a newline arrives
   * once the learner has exited. */
  void (*on_line)(void *ud, ffdl_learner *learner, const char *line, size_t len);
  /* The learner ended; after this the learner handle is freed by the backend:
   * do not use it again. Called exactly once, unless launch failed. */
  void (*on_exit)(void *ud, ffdl_learner *learner, ffdl_exit_kind kind, int exit_code,
                  int term_signal);
} ffdl_learner_callbacks;

typedef struct {
  const char *const *argv; /* NULL-terminated; argv[0] is looked up in PATH */
  const char *const *env;  /* NULL-terminated "K=V" strings: the whole environment */
  const char *cwd;         /* working directory */
  /* The learner's stdout and stderr, appended by the learner itself (created
   * if missing); the backend reads its lines back from this file, starting at
   * its size at launch. NULL: output goes to /dev/null and on_line is never
   * called. */
  const char *log_path;
  /* Where the learner's exit status is left; NULL: nowhere. Otherwise the
   * learner runs under a /bin/sh wrapper that leads its process group
   * (ffdl_learner_pid is the wrapper's) and, when the learner ends, writes
   * its status here atomically (to "EXIT_PATH.tmp", renamed over EXIT_PATH),
   * whether or not an ffdl process is alive then. The format is the shell's
   * $?: the status in ASCII decimal, no newline; 0 is success, 128+N means
   * killed by signal N (1 <= N <= 64), anything else is an exit code. A
   * wrapper killed itself (SIGKILL to the group) writes nothing. Launch
   * removes a file left at EXIT_PATH and fails if it cannot write there; a
   * relative path is taken from ffdl's working directory. on_exit reports
   * such a learner by the same rule (128+N: FFDL_EXIT_SIGNAL, signal N). The
   * wrapper shell may add PWD to the learner's environment. */
  const char *exit_path;
  uint64_t memory_limit_bytes; /* 0: none (RLIMIT_AS is not used: it breaks runtimes) */
} ffdl_launch_spec;

/*
 * Starts a learner in its own process group. On success *out is a handle
 * the backend owns (valid until on_exit returns). On failure returns a
 * negative code, never calls a callback, and *err says why (caller frees).
 */
int ffdl_backend_launch(ffdl_backend *be, const ffdl_launch_spec *spec,
                        const ffdl_learner_callbacks *cb, void *ud, ffdl_learner **out, char **err);

/* Stops the learner's whole process group: SIGTERM, then SIGKILL after
 * GRACE_MS (0: SIGKILL at once). on_exit follows. A no-op once the learner
 * has exited (LEARNER stays valid until its on_exit returns; borrowed). */
void ffdl_backend_kill(ffdl_backend *be, ffdl_learner *learner, unsigned grace_ms);

int ffdl_learner_pid(const ffdl_learner *learner);

/* Bytes of the log up to the end of the last line reported through on_line
 * (a partial line not yet reported is not counted): what to pass to
 * ffdl_backend_adopt as LOG_OFFSET so that no line is lost or repeated. */
uint64_t ffdl_learner_log_offset(const ffdl_learner *learner);

/*
 * Adopts a learner that an earlier ffdl process launched (with an exit_path)
 * and left running, for instance by crashing: PID is its process group. Its
 * end is noticed by polling every 100 ms, as it is not our child; its lines
 * are read from LOG_PATH from byte LOG_OFFSET on (0: replay the whole file);
 * its status comes from EXIT_PATH, in launch's format; no file there (or
 * EXIT_PATH NULL) is reported as FFDL_EXIT_SIGNAL with SIGKILL. A learner
 * that ended before this call (an exit file exists, PID is gone or a zombie,
 * or PID now is another process: not the leader of its own session, or, with
 * EXIT_PATH and LOG_PATH, one whose stdout and stderr are not LOG_PATH) gets
 * its remaining lines and its exit reported from the loop, never from within
 * this call, and nothing is signalled. ffdl_backend_kill, ffdl_backend_close
 * and ffdl_backend_abandon treat it as a launched learner. All strings are
 * borrowed. On success *out is as for launch; on failure returns a negative
 * code, never calls a callback, and *err says why (caller frees).
 */
int ffdl_backend_adopt(ffdl_backend *be, int pid, const char *log_path, uint64_t log_offset,
                       const char *exit_path, const ffdl_learner_callbacks *cb, void *ud,
                       ffdl_learner **out, char **err);

/* The local backend: learners are process groups on this machine. */
int ffdl_backend_local_new(uv_loop_t *loop, ffdl_backend **out);
/* Kills what still runs (SIGKILL to each group) and frees the backend once
 * the last exit callback has run and its handles are closed; then calls CB
 * (may be NULL). With no learners left, frees and calls CB at once. Later
 * launches fail; call it once. */
void ffdl_backend_close(ffdl_backend *be, void (*cb)(void *ud), void *ud);
/* What a crashing server amounts to, done cleanly: frees the backend and
 * every learner handle without signalling anything, so the learners keep
 * running (and keep writing their logs and exit files) for a later process
 * to adopt. No callback runs after this call, not even for a learner that
 * ended already; BE and every learner handle are invalid from now on. The
 * memory is freed as the handles close, in the next turns of the loop (run
 * it until it has no handles, or let the process exit). Use it instead of
 * ffdl_backend_close, once; it may be called from a learner callback. */
void ffdl_backend_abandon(ffdl_backend *be);
/* Number of learners still running. */
size_t ffdl_backend_running(const ffdl_backend *be);

#endif
