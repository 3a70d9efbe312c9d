/*
 * localstore.c: the embedded default data store, plain directories.
 * Owns: tree copy, tree removal, zipping a model directory (libzip).
 * Must not: run on the loop thread (callers use uv_queue_work) or know
 * about jobs.
 */
#define _XOPEN_SOURCE 700
#include "store/localstore.h"
#include "core/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

static char *path_error(const char *what, const char *path) {
  char buf[4200];
  snprintf(buf, sizeof buf, "%s %s: %s", what, path, strerror(errno));
  return strdup(buf);
}

int ffdl_localstore_mkdirs(const char *path, unsigned mode) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, mode) != 0 && errno != EEXIST) return FFDL_EIO;
    *p = '/';
  }
  if (mkdir(buf, mode) != 0 && errno != EEXIST) return FFDL_EIO;
  return FFDL_OK;
}

static int copy_file(const char *src, const char *dst, mode_t mode, uint64_t *bytes, char **err) {
  int in = open(src, O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    *err = path_error("cannot read", src);
    return FFDL_EIO;
  }
  int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 0777);
  if (out < 0) {
    *err = path_error("cannot write", dst);
    close(in);
    return FFDL_EIO;
  }
  static __thread char buf[1 << 16];
  ssize_t n;
  int rc = FFDL_OK;
  while ((n = read(in, buf, sizeof buf)) > 0) {
    if (write(out, buf, (size_t)n) != n) {
      *err = path_error("cannot write", dst);
      rc = FFDL_EIO;
      break;
    }
    if (bytes) *bytes += (uint64_t)n;
  }
  if (n < 0 && rc == FFDL_OK) {
    *err = path_error("cannot read", src);
    rc = FFDL_EIO;
  }
  close(in);
  if (close(out) != 0 && rc == FFDL_OK) {
    *err = path_error("cannot write", dst);
    rc = FFDL_EIO;
  }
  return rc;
}

/* Model code leaves out what is not code: hidden entries (.git, .ffdl) and
 * ffdl's own results, so that a model directory that holds them is safe. */
static int skipped_in_model(const char *name) {
  return name[0] == '.' || strcmp(name, "ffdl-results") == 0 || strcmp(name, "__pycache__") == 0;
}

/* Directories a copy or a zip leaves out wherever they are in the tree,
 * known by identity: the copy's own top directory once made (a source
 * that holds it would copy the copy into itself, without end) and, for
 * model code, the runtime's data home and results (ffdl-run started below
 * the model directory keeps its jobs there: every job would copy all the
 * earlier jobs' copies). */
#define MAX_LEFT_OUT 4
typedef struct {
  dev_t dev[MAX_LEFT_OUT];
  ino_t ino[MAX_LEFT_OUT];
  int n;
} left_out;

static void leave_out(left_out *lo, const char *path) {
  struct stat st;
  if (lo->n < MAX_LEFT_OUT && path && stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
    lo->dev[lo->n] = st.st_dev;
    lo->ino[lo->n] = st.st_ino;
    lo->n++;
  }
}

static void leave_out_all(left_out *lo, const char *const *paths) {
  for (int i = 0; paths && paths[i]; i++)
    leave_out(lo, paths[i]);
}

static int is_left_out(const left_out *lo, const struct stat *st) {
  for (int i = 0; S_ISDIR(st->st_mode) && i < lo->n; i++)
    if (lo->dev[i] == st->st_dev && lo->ino[i] == st->st_ino) return 1;
  return 0;
}

typedef struct {
  uint64_t *bytes;
  char **err;
  left_out skip;
  int root_made; /* the top directory of the copy is in SKIP */
} copy_job;

static int copy_entry(copy_job *c, const char *src, const char *dst, int follow, int model_root) {
  struct stat st;
  if ((follow ? stat(src, &st) : lstat(src, &st)) != 0) {
    *c->err = path_error("cannot read", src);
    return FFDL_ENOENT;
  }
  if (is_left_out(&c->skip, &st)) return FFDL_OK;
  if (S_ISLNK(st.st_mode)) {
    char target[4096];
    ssize_t n = readlink(src, target, sizeof target - 1);
    if (n < 0) return (*c->err = path_error("cannot read link", src), FFDL_EIO);
    target[n] = '\0';
    unlink(dst);
    return symlink(target, dst) == 0 ? FFDL_OK
                                     : (*c->err = path_error("cannot link", dst), FFDL_EIO);
  }
  if (!S_ISDIR(st.st_mode)) return copy_file(src, dst, st.st_mode, c->bytes, c->err);
  if (ffdl_localstore_mkdirs(dst, 0755) != FFDL_OK) {
    *c->err = path_error("cannot create", dst);
    return FFDL_EIO;
  }
  if (!c->root_made) {
    leave_out(&c->skip, dst);
    c->root_made = 1;
  }
  DIR *d = opendir(src);
  if (!d) {
    *c->err = path_error("cannot list", src);
    return FFDL_EIO;
  }
  int rc = FFDL_OK;
  struct dirent *e;
  while (rc == FFDL_OK && (e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (model_root && skipped_in_model(e->d_name)) continue;
    char from[4096], to[4096];
    snprintf(from, sizeof from, "%s/%s", src, e->d_name);
    snprintf(to, sizeof to, "%s/%s", dst, e->d_name);
    rc = copy_entry(c, from, to, 0, 0);
  }
  closedir(d);
  return rc;
}

/* The root is followed when it is a link (a data set linked into place);
 * links inside the tree are copied as links. */
int ffdl_localstore_copy_tree(const char *src, const char *dst, uint64_t *bytes, char **err) {
  *err = NULL;
  copy_job c = {.bytes = bytes, .err = err};
  return copy_entry(&c, src, dst, 1, 0);
}

int ffdl_localstore_copy_model(const char *src, const char *dst, const char *const *left_out_dirs,
                               char **err) {
  *err = NULL;
  copy_job c = {.err = err};
  leave_out_all(&c.skip, left_out_dirs);
  return copy_entry(&c, src, dst, 1, 1);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

int ffdl_localstore_remove_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return errno == ENOENT ? FFDL_OK : FFDL_EIO;
  return nftw(path, remove_entry, 32, FTW_DEPTH | FTW_PHYS) == 0 ? FFDL_OK : FFDL_EIO;
}

/* Adds DIR/REL (a file or a directory, recursively) to the archive. */
static int add_to_zip(zip_t *z, const char *dir, const char *rel, const left_out *skip,
                      char **err) {
  char full[4096];
  snprintf(full, sizeof full, "%s%s%s", dir, *rel ? "/" : "", rel);
  struct stat st;
  if (lstat(full, &st) != 0) return (*err = path_error("cannot read", full), FFDL_EIO);
  if (is_left_out(skip, &st)) return FFDL_OK;
  if (S_ISREG(st.st_mode)) {
    zip_source_t *src = zip_source_file(z, full, 0, -1);
    if (!src || zip_file_add(z, rel, src, ZIP_FL_ENC_UTF_8) < 0) {
      zip_source_free(src);
      return (*err = path_error("cannot add to the zip", full), FFDL_EIO);
    }
    return FFDL_OK;
  }
  if (!S_ISDIR(st.st_mode)) return FFDL_OK; /* links and devices stay out */
  if (*rel && zip_dir_add(z, rel, ZIP_FL_ENC_UTF_8) < 0)
    return (*err = path_error("cannot add to the zip", full), FFDL_EIO);
  DIR *d = opendir(full);
  if (!d) return (*err = path_error("cannot list", full), FFDL_EIO);
  int rc = FFDL_OK;
  struct dirent *e;
  while (rc == FFDL_OK && (e = readdir(d))) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    if (strcmp(e->d_name, "__pycache__") == 0 || (!*rel && skipped_in_model(e->d_name))) continue;
    char child[4096];
    snprintf(child, sizeof child, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
    rc = add_to_zip(z, dir, child, skip, err);
  }
  closedir(d);
  return rc;
}

/* An archive of no entry: its end-of-central-directory record alone. */
static int write_empty_zip(const char *zip_path, char **err) {
  static const unsigned char end_record[22] = {'P', 'K', 5, 6};
  FILE *f = fopen(zip_path, "wb");
  int ok = f && fwrite(end_record, sizeof end_record, 1, f) == 1;
  if (f && fclose(f) != 0) ok = 0;
  if (ok) return FFDL_OK;
  *err = path_error("cannot write", zip_path);
  unlink(zip_path);
  return FFDL_EIO;
}

int ffdl_localstore_zip_dir(const char *dir, const char *zip_path, const char *const *left_out_dirs,
                            char **err) {
  *err = NULL;
  left_out skip = {0};
  leave_out_all(&skip, left_out_dirs);
  int zerr;
  zip_t *z = zip_open(zip_path, ZIP_CREATE | ZIP_TRUNCATE, &zerr);
  if (!z) return (*err = path_error("cannot create", zip_path), FFDL_EIO);
  int rc = add_to_zip(z, dir, "", &skip, err);
  if (rc != FFDL_OK) {
    zip_discard(z);
    unlink(zip_path);
    return rc;
  }
  int entries = (int)zip_get_num_entries(z, 0);
  if (zip_close(z) != 0) {
    *err = strdup(zip_strerror(z));
    zip_discard(z);
    return FFDL_EIO;
  }
  /* libzip writes no file at all for an archive without entries */
  return entries > 0 ? FFDL_OK : write_empty_zip(zip_path, err);
}
