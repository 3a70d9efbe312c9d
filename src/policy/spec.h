/*
 * Job specs: reads an FfDL manifest (YAML or JSON) or a declarative Lua spec,
 * runs the built-in schema (lua/ffdl/manifest.lua) and the team's
 * validate() hook, and yields one normalized job spec or a list of
 * diagnostics with file, line and column.
 */
#ifndef FFDL_POLICY_SPEC_H
#define FFDL_POLICY_SPEC_H

#include "policy/generation.h"

#include <jansson.h>
#include <stdio.h>

#define FFDL_SPEC_MAX_BYTES (1u << 20)

typedef struct {
  int line, col;
  int warning; /* 0: error, 1: warning */
  char *path;  /* "data_stores[0].connection"; "(file)" for the whole file */
  char *message;
} ffdl_diag;

typedef struct {
  ffdl_diag *items;
  size_t n, cap;
} ffdl_diags;

typedef enum { FFDL_SPEC_AUTO, FFDL_SPEC_YAML, FFDL_SPEC_JSON, FFDL_SPEC_LUA } ffdl_spec_format;

/*
 * Checks TEXT (borrowed, NUL-terminated after LEN bytes) read from NAME.
 * Appends what it finds to DIAGS. On success returns 0 and, when SPEC is
 * not NULL, stores the normalized spec there (caller decrefs); the spec
 * keeps secrets: see ffdl_spec_redacted(). Returns FFDL_EINVALID when
 * any diagnostic is an error.
 */
int ffdl_spec_check_buffer(ffdl_generation *gen, const char *name, const char *text, size_t len,
                           ffdl_spec_format format, ffdl_diags *diags, json_t **spec);
/* The same for a file, with the size limit and read errors as diagnostics. */
int ffdl_spec_check_file(ffdl_generation *gen, const char *path, ffdl_diags *diags, json_t **spec);

/* Marks a data store that the server adds from its own settings (its
 * default S3 store): a job's user never gave its connection. */
#define FFDL_SPEC_SERVER_STORE "server_store"

/* Returns a deep copy of SPEC with every secret replaced, and the whole
 * connection of a FFDL_SPEC_SERVER_STORE store left out: its endpoint and
 * access key are the server's, not its user's (caller decrefs). */
json_t *ffdl_spec_redacted(const json_t *spec);

/* Sorts by line and writes "NAME:LINE:COL: [warning: ]path: message" lines. */
void ffdl_diags_print(ffdl_diags *diags, const char *name, FILE *out);
size_t ffdl_diags_errors(const ffdl_diags *diags);
void ffdl_diags_free(ffdl_diags *diags);

#endif
