/* The `ffdl` client: FfDL's verbs against an ffdl-server (or FfDL's API). */
#ifndef FFDL_APP_CLIENT_H
#define FFDL_APP_CLIENT_H

#include <jansson.h>
#include <stddef.h>

/* The server's URL from FFDL_URL or DLAAS_URL, or NULL. */
const char *ffdl_client_url(void);
/* Runs client command ARGV[0]; returns the exit status, or -1 when ARGV[0]
 * is not a client command. */
int ffdl_client_main(int argc, char **argv);

/* `ffdl policy reload|status` against the server: exit 0, or non-zero with
 * the errors of a rejected reload on stderr. */
int ffdl_client_policy(const char *verb);

/* Remote primitives (the server from ffdl_client_url()):
 * submit a manifest text named MANIFEST_NAME with the model directory (or
 * zip) MODEL; 0 and the id, or non-zero with *err (caller frees). When
 * WARNINGS is not NULL it gets the server's validation warnings, a list of
 * "NAME:LINE:COL: warning: ..." strings (caller decrefs; empty if none). */
int ffdl_client_submit(const char *manifest_name, const char *manifest_text, size_t len,
                       const char *model, char id[64], json_t **warnings, char **err);
/* GET PATH as JSON (caller decrefs), or NULL. */
json_t *ffdl_client_get(const char *path);
int ffdl_client_halt(const char *id);
/* GET /v1/models/ID/WHAT ("trained_model", "definition") into FILE. */
int ffdl_client_download(const char *id, const char *what, const char *file);

/* Prints {model_id, status, since, decisions: [...]} for people. */
void ffdl_print_explanation(json_t *doc);
/* `ffdl explain ID` against the server. */
int ffdl_client_explain(const char *id);

#endif
