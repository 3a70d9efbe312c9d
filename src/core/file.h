/* Whole-file reads with a size limit. */
#ifndef FFDL_CORE_FILE_H
#define FFDL_CORE_FILE_H

#include <stddef.h>

/*
 * Reads PATH into a NUL-terminated buffer (caller frees *out).
 * Fails with FFDL_ETOOBIG when the file is larger than LIMIT bytes,
 * FFDL_ENOENT when it does not exist, FFDL_EIO otherwise (errno kept).
 */
int ffdl_file_read(const char *path, size_t limit, char **out, size_t *len);

/* Returns 1 when PATH is an existing directory. */
int ffdl_file_is_dir(const char *path);

#endif
