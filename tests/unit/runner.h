/* A tiny test runner: every case runs in its own process (libuv's way). */
#ifndef FFDL_TEST_RUNNER_H
#define FFDL_TEST_RUNNER_H

#include <stdio.h>
#include <stdlib.h>

typedef void (*test_fn)(void);
typedef struct {
  const char *name;
  test_fn fn;
} test_case;

#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                     \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

#define CHECK_CONTAINS(haystack, needle)                                                           \
  do {                                                                                             \
    const char *h_ = (haystack);                                                                   \
    if (!h_ || !strstr(h_, (needle))) {                                                            \
      fprintf(stderr, "%s:%d: expected \"%s\" in \"%s\"\n", __FILE__, __LINE__, (needle),          \
              h_ ? h_ : "(null)");                                                                 \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

/* Runs CASES (ending with {NULL, NULL}); with an argument, only that case. */
int run_tests(const test_case *cases, int argc, char **argv);

#endif
