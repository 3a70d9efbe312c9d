/* The `ffdl` client: FfDL's verbs against an ffdl-server (or FfDL's API). */
#ifndef FFDL_APP_CLIENT_H
#define FFDL_APP_CLIENT_H

/* The server's URL from FFDL_URL or DLAAS_URL, or NULL. */
const char *ffdl_client_url(void);
/* Runs client command ARGV[0]; returns the exit status, or -1 when ARGV[0]
 * is not a client command. */
int ffdl_client_main(int argc, char **argv);

/* `ffdl policy reload|status` against the server: exit 0, or non-zero with
 * the errors of a rejected reload on stderr. */
int ffdl_client_policy(const char *verb);

/* Prints {model_id, status, since, decisions: [...]} for people. */
#include <jansson.h>
void ffdl_print_explanation(json_t *doc);
/* `ffdl explain ID` against the server. */
int ffdl_client_explain(const char *id);

#endif
