/*
 * upload.c: safe extraction of uploaded model zips (libzip).
 * Owns: the zip-slip and zip-bomb checks. Must not: trust sizes that the
 * archive declares: bytes are counted as they are inflated.
 */
#include "api/upload.h"
#include "core/error.h"
#include "store/localstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zip.h>

static char *message(const char *fmt, const char *name) {
  char buf[1200];
  snprintf(buf, sizeof buf, fmt, name);
  return strdup(buf);
}

static int safe_name(const char *name) {
  if (!name[0] || name[0] == '/' || name[0] == '\\') return 0;
  if (strstr(name, "\\")) return 0;
  const char *p = name;
  while (*p) {
    size_t n = strcspn(p, "/");
    if (n == 2 && p[0] == '.' && p[1] == '.') return 0;
    p += n;
    if (*p == '/') p++;
  }
  return 1;
}

/* Inflates entry I to PATH, counting bytes against *budget. */
static int extract_entry(zip_t *z, zip_uint64_t i, const char *path, uint64_t *budget, char **err,
                         const char *name) {
  zip_file_t *zf = zip_fopen_index(z, i, 0);
  if (!zf) return (*err = message("cannot read the entry %s", name), FFDL_EINVALID);
  FILE *out = fopen(path, "wb");
  if (!out) {
    zip_fclose(zf);
    return (*err = message("cannot write the entry %s", name), FFDL_EIO);
  }
  char buf[65536];
  zip_int64_t n;
  int rc = FFDL_OK;
  while ((n = zip_fread(zf, buf, sizeof buf)) > 0) {
    if ((uint64_t)n > *budget) {
      *err = message("the archive inflates past the size limit at %s (a zip bomb?)", name);
      rc = FFDL_ELIMIT;
      break;
    }
    *budget -= (uint64_t)n;
    if (fwrite(buf, 1, (size_t)n, out) != (size_t)n) {
      *err = message("cannot write the entry %s", name);
      rc = FFDL_EIO;
      break;
    }
  }
  if (n < 0 && rc == FFDL_OK) rc = (*err = message("the entry %s is corrupt", name), FFDL_EINVALID);
  fclose(out);
  zip_fclose(zf);
  return rc;
}

static int check_names(zip_t *z, uint64_t max, char **err) {
  zip_int64_t count = zip_get_num_entries(z, 0);
  uint64_t declared = 0;
  for (zip_int64_t i = 0; i < count; i++) {
    zip_stat_t st;
    if (zip_stat_index(z, (zip_uint64_t)i, 0, &st) != 0 || !st.name)
      return (*err = strdup("the archive has an unreadable entry"), FFDL_EINVALID);
    if (!safe_name(st.name))
      return (*err = message("the entry %s points outside the model directory", st.name),
              FFDL_EINVALID);
    zip_uint8_t opsys;
    zip_uint32_t attr;
    if (zip_file_get_external_attributes(z, (zip_uint64_t)i, 0, &opsys, &attr) == 0 &&
        opsys == ZIP_OPSYS_UNIX && ((attr >> 16) & 0170000) == 0120000)
      return (*err = message("the entry %s is a symbolic link, which is not allowed", st.name),
              FFDL_EINVALID);
    declared += st.size;
    if (declared > max)
      return (*err = message("the archive declares more than the size limit at %s", st.name),
              FFDL_ELIMIT);
  }
  return FFDL_OK;
}

int ffdl_upload_extract_zip(const void *data, size_t len, const char *dir, uint64_t max_unzipped,
                            char **err) {
  *err = NULL;
  zip_error_t zerr;
  zip_error_init(&zerr);
  zip_source_t *src = zip_source_buffer_create(data, len, 0, &zerr);
  zip_t *z = src ? zip_open_from_source(src, ZIP_RDONLY, &zerr) : NULL;
  if (!z) {
    zip_source_free(src);
    zip_error_fini(&zerr);
    *err = strdup("model_definition is not a zip archive");
    return FFDL_EINVALID;
  }
  zip_error_fini(&zerr);
  int rc = check_names(z, max_unzipped, err);
  if (rc == FFDL_OK && ffdl_localstore_mkdirs(dir, 0755) != FFDL_OK) {
    *err = strdup("cannot create the model directory");
    rc = FFDL_EIO;
  }
  uint64_t budget = max_unzipped;
  zip_int64_t count = zip_get_num_entries(z, 0);
  for (zip_int64_t i = 0; rc == FFDL_OK && i < count; i++) {
    const char *name = zip_get_name(z, (zip_uint64_t)i, 0);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    size_t plen = strlen(path);
    if (plen && path[plen - 1] == '/') {
      ffdl_localstore_mkdirs(path, 0755);
      continue;
    }
    char *slash = strrchr(path, '/');
    *slash = '\0';
    ffdl_localstore_mkdirs(path, 0755);
    *slash = '/';
    rc = extract_entry(z, (zip_uint64_t)i, path, &budget, err, name);
  }
  zip_discard(z);
  if (rc != FFDL_OK) ffdl_localstore_remove_tree(dir);
  return rc;
}
