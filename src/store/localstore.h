/*
 * Local directory data stores: staging training data in, results out, and
 * zipping model code. Blocking calls: run them on the thread pool.
 */
#ifndef FFDL_STORE_LOCALSTORE_H
#define FFDL_STORE_LOCALSTORE_H

#include <stdint.h>

/* mkdir -p with MODE for each created directory. */
int ffdl_localstore_mkdirs(const char *path, unsigned mode);
/* Copies the tree SRC into DST (created), files and directories; symlinks
 * are copied as links. *err names the path that failed (caller frees).
 * BYTES (may be NULL) receives the number of bytes copied. */
int ffdl_localstore_copy_tree(const char *src, const char *dst, uint64_t *bytes, char **err);
/* Copies model code: like copy_tree, without hidden entries, __pycache__
 * and ffdl-results at the top (the zip of ffdl_localstore_zip_dir matches),
 * nor the directories LEFT_OUT_DIRS names (NULL-terminated, may be NULL;
 * at most 3), wherever they are in SRC: the runtime's data home and
 * results when the model directory holds them. */
int ffdl_localstore_copy_model(const char *src, const char *dst, const char *const *left_out_dirs,
                               char **err);
/* rm -rf PATH; a missing PATH is fine. */
int ffdl_localstore_remove_tree(const char *path);
/* Writes a zip of the tree DIR (entries relative to DIR) to ZIP_PATH,
 * leaving out LEFT_OUT_DIRS as ffdl_localstore_copy_model does. */
int ffdl_localstore_zip_dir(const char *dir, const char *zip_path, const char *const *left_out_dirs,
                            char **err);

#endif
