/*
 * users.c: the user table and token checks.
 * Owns: token generation, hashing and constant-time comparison. Must not:
 * log or return a token after add() has handed it out.
 */
#include "store/users.h"
#include "core/error.h"
#include "core/log.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ffdl_users {
  sqlite3 *db;
};

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS users ("
    "  name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, admin INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL)";

int ffdl_users_open(const char *db_path, ffdl_users **out, char **err) {
  *out = NULL;
  *err = NULL;
  ffdl_users *u = calloc(1, sizeof *u);
  if (!u) return FFDL_ENOMEM;
  if (sqlite3_open(db_path, &u->db) != SQLITE_OK ||
      sqlite3_busy_timeout(u->db, 5000) != SQLITE_OK ||
      sqlite3_exec(u->db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s: %s", db_path, sqlite3_errmsg(u->db));
    *err = strdup(msg);
    ffdl_users_close(u);
    return FFDL_EIO;
  }
  *out = u;
  return FFDL_OK;
}

void ffdl_users_close(ffdl_users *u) {
  if (!u) return;
  sqlite3_close(u->db);
  free(u);
}

static void sha256_hex(const char *text, char out[65]) {
  unsigned char digest[32];
  unsigned int len = 0;
  EVP_Digest(text, strlen(text), digest, &len, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++)
    snprintf(out + 2 * i, 3, "%02x", digest[i]);
}

static int valid_name(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > 64) return 0;
  for (const char *p = name; *p; p++)
    if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-", *p)) return 0;
  return 1;
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ffdl_users_add(ffdl_users *u, const char *name, int admin, const char *given_token,
                   char *token) {
  if (!valid_name(name)) return FFDL_EINVALID;
  if (given_token) {
    snprintf(token, 80, "%s", given_token);
  } else {
    unsigned char raw[32];
    if (RAND_bytes(raw, sizeof raw) != 1) return FFDL_EIO;
    char *p = token + sprintf(token, "ffdl_");
    for (int i = 0; i < 32; i++)
      p += sprintf(p, "%02x", raw[i]);
  }
  char hash[65];
  sha256_hex(token, hash);
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(u->db, "INSERT INTO users VALUES (?, ?, ?, ?)", -1, &st, NULL) !=
      SQLITE_OK)
    return FFDL_EIO;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, hash, -1, SQLITE_TRANSIENT);
  sqlite3_bind_int(st, 3, admin ? 1 : 0);
  sqlite3_bind_int64(st, 4, now_ms());
  int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc == SQLITE_CONSTRAINT) return FFDL_EINVALID;
  return rc == SQLITE_DONE ? FFDL_OK : FFDL_EIO;
}

int ffdl_users_remove(ffdl_users *u, const char *name) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(u->db, "DELETE FROM users WHERE name = ?", -1, &st, NULL) != SQLITE_OK)
    return FFDL_EIO;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
  int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return FFDL_EIO;
  return sqlite3_changes(u->db) ? FFDL_OK : FFDL_ENOENT;
}

json_t *ffdl_users_list(ffdl_users *u) {
  json_t *out = json_array();
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(u->db, "SELECT name, admin, created_ms FROM users ORDER BY name", -1, &st,
                         NULL) != SQLITE_OK)
    return out;
  while (sqlite3_step(st) == SQLITE_ROW)
    json_array_append_new(out, json_pack("{s:s,s:b,s:I}", "name", sqlite3_column_text(st, 0),
                                         "admin", sqlite3_column_int(st, 1), "created_ms",
                                         (json_int_t)sqlite3_column_int64(st, 2)));
  sqlite3_finalize(st);
  return out;
}

size_t ffdl_users_count(ffdl_users *u) {
  sqlite3_stmt *st;
  size_t n = 0;
  if (sqlite3_prepare_v2(u->db, "SELECT count(*) FROM users", -1, &st, NULL) != SQLITE_OK) return 0;
  if (sqlite3_step(st) == SQLITE_ROW) n = (size_t)sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}

/* Every row is compared, in constant time per row, so that the time does
 * not tell how close a guess came. */
int ffdl_users_authenticate(ffdl_users *u, const char *token, char *name, int *admin) {
  char hash[65];
  sha256_hex(token, hash);
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(u->db, "SELECT name, token_sha256, admin FROM users", -1, &st, NULL) !=
      SQLITE_OK)
    return FFDL_EIO;
  int found = 0;
  while (sqlite3_step(st) == SQLITE_ROW) {
    const char *stored = (const char *)sqlite3_column_text(st, 1);
    if (stored && strlen(stored) == 64 && CRYPTO_memcmp(stored, hash, 64) == 0 && !found) {
      found = 1;
      snprintf(name, 65, "%s", (const char *)sqlite3_column_text(st, 0));
      *admin = sqlite3_column_int(st, 2);
    }
  }
  sqlite3_finalize(st);
  return found ? FFDL_OK : FFDL_ENOENT;
}

int ffdl_users_exists(ffdl_users *u, const char *name, int *admin) {
  sqlite3_stmt *st;
  if (sqlite3_prepare_v2(u->db, "SELECT admin FROM users WHERE name = ?", -1, &st, NULL) !=
      SQLITE_OK)
    return 0;
  sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
  int found = sqlite3_step(st) == SQLITE_ROW;
  if (found && admin) *admin = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  return found;
}
