/* Policy tests: the Lua files of policies/tests, run against one generation. */
#ifndef FFDL_POLICY_POLICYTEST_H
#define FFDL_POLICY_POLICYTEST_H

#include "policy/generation.h"

#include <stdio.h>

/*
 * Runs every .lua file of DIR/tests in GEN's sandbox. A test file returns a table
 * of functions; each runs with the globals T (lua/ffdl/testing.lua) and
 * policies (every policy module of GEN). Writes one line per test to OUT
 * ("ok FILE NAME" or "FAIL FILE NAME: file:line: message") and a closing
 * "N passed, N failed". Returns 0 when all pass, FFDL_EINVALID otherwise.
 */
int ffdl_policy_test_run(ffdl_generation *gen, const char *dir, FILE *out, int *passed,
                         int *failed);

#endif
