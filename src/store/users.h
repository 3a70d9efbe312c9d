/*
 * Users and their API tokens, in the job store's SQLite file. Only a
 * SHA-256 of each token is kept; tokens are 256 random bits, so a plain
 * hash is enough, and lookups compare hashes in constant time.
 */
#ifndef FFDL_STORE_USERS_H
#define FFDL_STORE_USERS_H

#include <jansson.h>

typedef struct ffdl_users ffdl_users;

int ffdl_users_open(const char *db_path, ffdl_users **out, char **err);
void ffdl_users_close(ffdl_users *u);

/* Adds NAME with a new random token written to TOKEN (at least 80 bytes),
 * or with GIVEN_TOKEN when not NULL. FFDL_EINVALID when NAME exists or is
 * not [A-Za-z0-9_.@-]{1,64}. */
int ffdl_users_add(ffdl_users *u, const char *name, int admin, const char *given_token,
                   char *token);
int ffdl_users_remove(ffdl_users *u, const char *name);
/* [{name, admin, created_ms}] (caller decrefs). */
json_t *ffdl_users_list(ffdl_users *u);
size_t ffdl_users_count(ffdl_users *u);

/* Checks TOKEN; on success writes the user's name (at least 65 bytes) and
 * admin flag and returns 0; FFDL_ENOENT otherwise. */
int ffdl_users_authenticate(ffdl_users *u, const char *token, char *name, int *admin);
/* Whether NAME exists; its admin flag in *admin. */
int ffdl_users_exists(ffdl_users *u, const char *name, int *admin);

#endif
