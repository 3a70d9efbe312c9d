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
  /* One line of the learner's stdout or stderr, in arrival order, without its
   * newline and NUL-terminated at LEN (borrowed: valid during the call). A line
   * longer than 64 KiB arrives in pieces of 64 KiB. */
  void (*on_line)(void *ud, ffdl_learner *learner, const char *line, size_t len);
  /* The learner ended; after this the learner handle is freed by the backend:
   * do not use it again. Called exactly once, unless launch failed. */
  void (*on_exit)(void *ud, ffdl_learner *learner, ffdl_exit_kind kind, int exit_code,
                  int term_signal);
} ffdl_learner_callbacks;

typedef struct {
  const char *const *argv;     /* NULL-terminated; argv[0] is looked up in PATH */
  const char *const *env;      /* NULL-terminated "K=V" strings: the whole environment */
  const char *cwd;             /* working directory */
  const char *log_path;        /* every output line is appended here too */
  const char *exit_path;       /* where the learner's exit status is left (NULL: nowhere) */
  uint64_t memory_limit_bytes; /* 0: none (RLIMIT_AS is not used: it breaks runtimes) */
} ffdl_launch_spec;

/*
 * Starts a learner in its own process group. On success *out is a handle
 * the backend owns (valid until on_exit returns). On failure returns a
 * negative code, never calls a callback, and *err says why (caller frees).
 */
int ffdl_backend_launch(ffdl_backend *be, const ffdl_launch_spec *spec,
                        const ffdl_learner_callbacks *cb, void *ud, ffdl_learner **out,
                        char **err);

/* Stops the learner's whole process group: SIGTERM, then SIGKILL after
 * GRACE_MS (0: SIGKILL at once). on_exit follows. A no-op once the learner
 * has exited (LEARNER stays valid until its on_exit returns; borrowed). */
void ffdl_backend_kill(ffdl_backend *be, ffdl_learner *learner, unsigned grace_ms);

int ffdl_learner_pid(const ffdl_learner *learner);

/* Adopts a learner started by an earlier process (after a restart). */
int ffdl_backend_adopt(ffdl_backend *be, int pid, const char *log_path, uint64_t log_offset,
                       const char *exit_path, const ffdl_learner_callbacks *cb, void *ud,
                       ffdl_learner **out, char **err);
/* Frees the backend's handles and leaves every learner running. */
void ffdl_backend_abandon(ffdl_backend *be);

/* The local backend: learners are process groups on this machine. */
int ffdl_backend_local_new(uv_loop_t *loop, ffdl_backend **out);
/* Kills what still runs (SIGKILL to each group) and frees the backend once
 * the last exit callback has run and its handles are closed; then calls CB
 * (may be NULL). With no learners left, frees and calls CB at once. Later
 * launches fail; call it once. */
void ffdl_backend_close(ffdl_backend *be, void (*cb)(void *ud), void *ud);
/* Number of learners still running. */
size_t ffdl_backend_running(const ffdl_backend *be);

#endif
