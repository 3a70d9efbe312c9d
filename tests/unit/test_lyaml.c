/* YAML decoding: typing, positions, and the limits that stop hostile input. */
#include "core/error.h"
#include "policy/sandbox.h"
#include "runner.h"

#include <lauxlib.h>
#include <string.h>

/* Runs Lua CODE with `Y` bound to ffdl.yaml.decode; CODE asserts. */
static void lua_check(const char *code) {
  ffdl_sandbox *sb;
  CHECK(ffdl_sandbox_new(NULL, &sb) == FFDL_OK);
  char *err = NULL;
  char chunk[8192];
  snprintf(chunk, sizeof chunk, "local Y = ffdl.yaml.decode\n%s", code);
  ffdl_sandbox_push_env(ffdl_sandbox_state(sb));
  CHECK(ffdl_sandbox_load(sb, "@yaml_test.lua", chunk, strlen(chunk), &err) == FFDL_OK);
  int rc = ffdl_policy_call(sb, "test", 0, 0, 0, &err);
  if (rc != FFDL_OK) fprintf(stderr, "%s\n", err);
  CHECK(rc == FFDL_OK);
  ffdl_sandbox_free(sb);
}

static void scalars_are_typed(void) {
  lua_check("local d = Y('a: 1\\nb: 1.5\\nc: true\\nd: ~\\ne: \"1\"\\nf: 1Gb\\ng: 0x10\\nh: no')\n"
            "assert(math.type(d.a) == 'integer' and d.a == 1)\n"
            "assert(d.b == 1.5 and d.c == true and d.d == nil and d.e == '1')\n"
            "assert(d.f == '1Gb' and d.g == 16 and d.h == false)");
}
static void raw_text_is_kept(void) {
  lua_check("local d, p = Y('version: 1.10\\n')\n"
            "assert(d.version == 1.1 and p.version.raw == '1.10')");
}
static void positions_are_recorded(void) {
  lua_check("local d, p = Y('name: x\\nframework:\\n  name: tf\\nlist:\\n  - a\\n  - b\\n')\n"
            "assert(p['framework.name'].line == 3 and p['framework.name'].col == 9)\n"
            "assert(p['framework.name'].kline == 3 and p['framework.name'].kcol == 3)\n"
            "assert(p['list[1]'].line == 6)");
}
static void folded_command(void) {
  lua_check("local d = Y('command: >\\n  python3 train.py\\n  --epochs 2\\n')\n"
            "assert(d.command == 'python3 train.py --epochs 2\\n', d.command)");
}
static void duplicate_key(void) {
  lua_check("local d, e = Y('a: 1\\nb: 2\\na: 3\\n')\n"
            "assert(d == nil and e.line == 3 and e.col == 1 and e.path == 'a')\n"
            "assert(e.message == 'duplicate key \"a\" (first defined at line 1)', e.message)");
}
static void duplicate_null_key(void) {
  lua_check("local d, e = Y('a:\\na: 3\\n')\n"
            "assert(d == nil and e.message:find('duplicate key'))");
}
static void tab_indentation(void) {
  lua_check("local d, e = Y('a:\\n\\tb: 1\\n')\n"
            "assert(d == nil and e.line == 2 and e.col == 1, e.message)\n"
            "assert(e.message:find('tab character'), e.message)");
}
static void alias_bomb(void) {
  lua_check("local t = {'a: &a [x,x,x,x,x,x,x,x,x,x]'}\n"
            "local prev = 'a'\n"
            "for i = 1, 9 do local n = 'l' .. i\n"
            "  t[#t+1] = n .. ': &' .. n .. ' [' .. string.rep('*' .. prev, 10, ',') .. ']'\n"
            "  prev = n end\n"
            "local d, e = Y(table.concat(t, '\\n'))\n"
            "assert(d == nil and e.message:find('alias bomb'), e and e.message)");
}
static void deep_nesting(void) {
  lua_check("local d, e = Y(string.rep('[', 200) .. string.rep(']', 200))\n"
            "assert(d == nil and e.message:find('nesting deeper than 64'), e.message)");
}
static void invalid_utf8(void) {
  lua_check("local d, e = Y('name: \\xff\\xfe\\n')\n"
            "assert(d == nil and e.line == 1 and e.message:find('UTF%-8'), e.message)");
}
static void two_documents(void) {
  lua_check("local d, e = Y('a: 1\\n---\\nb: 2\\n')\n"
            "assert(d == nil and e.line == 2 and e.message:find('one YAML document'))");
}
static void unknown_alias(void) {
  lua_check("local d, e = Y('a: *nope\\n')\n"
            "assert(d == nil and e.message == 'unknown alias *nope')");
}
static void empty_stream(void) {
  lua_check("local d, p = Y('# only a comment\\n')\n"
            "assert(d == nil and type(p) == 'table')");
}

int main(int argc, char **argv) {
  static const test_case cases[] = {{"scalars_are_typed", scalars_are_typed},
                                    {"raw_text_is_kept", raw_text_is_kept},
                                    {"positions_are_recorded", positions_are_recorded},
                                    {"folded_command", folded_command},
                                    {"duplicate_key", duplicate_key},
                                    {"duplicate_null_key", duplicate_null_key},
                                    {"tab_indentation", tab_indentation},
                                    {"alias_bomb", alias_bomb},
                                    {"deep_nesting", deep_nesting},
                                    {"invalid_utf8", invalid_utf8},
                                    {"two_documents", two_documents},
                                    {"unknown_alias", unknown_alias},
                                    {"empty_stream", empty_stream},
                                    {NULL, NULL}};
  return run_tests(cases, argc, argv);
}
