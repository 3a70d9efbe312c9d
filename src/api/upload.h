/* Model zips as users upload them: checked before anything is written. */
#ifndef FFDL_API_UPLOAD_H
#define FFDL_API_UPLOAD_H

#include <stddef.h>
#include <stdint.h>

/*
 * Checks the zip in DATA and extracts it into DIR (created). Refuses, with
 * *err saying which entry (caller frees), archives that are not zips,
 * entries with ".." or absolute paths (zip-slip), links, and archives
 * whose entries add up to more than MAX_UNZIPPED bytes (a zip bomb; the
 * sizes are checked while extracting too, not only as the archive claims).
 * On failure DIR is removed.
 */
int ffdl_upload_extract_zip(const void *data, size_t len, const char *dir, uint64_t max_unzipped,
                            char **err);

#endif
