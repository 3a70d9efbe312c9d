/*
 * runner.c: forks each test case, with a time limit, and prints a TAP-like
 * line per case plus "N passed, N failed".
 */
#include "runner.h"

#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CASE_TIMEOUT_S 60

static int run_one(const test_case *t) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(CASE_TIMEOUT_S);
    t->fn();
    exit(0);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) < 0) return 0;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 1;
  if (WIFSIGNALED(status))
    fprintf(stderr, "  %s: killed by signal %d%s\n", t->name, WTERMSIG(status),
            WTERMSIG(status) == SIGALRM ? " (timed out)" : "");
  return 0;
}

int run_tests(const test_case *cases, int argc, char **argv) {
  int passed = 0, failed = 0, n = 0;
  for (const test_case *t = cases; t->name; t++) {
    if (argc > 1 && strcmp(argv[1], t->name) != 0) continue;
    n++;
    if (run_one(t)) {
      passed++;
      printf("ok %d %s\n", n, t->name);
    } else {
      failed++;
      printf("not ok %d %s\n", n, t->name);
    }
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed || n == 0 ? 1 : 0;
}
