/*
 * Pure helpers of the S3 client (no I/O, no loop): URI encoding for
 * Signature V4, backoff, Content-Range, key and path mapping, CRC-32C. Internal to
 * src/store/s3*.c; exposed in a header only so that tests/unit/test_s3.c can
 * check them.
 */
#ifndef FFDL_STORE_S3_UTIL_H
#define FFDL_STORE_S3_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* S3's maximum number of parts in one multipart upload. */
#define FFDL_S3_MAX_PARTS 10000

/* AWS URI encoding of S (SigV4's canonical form): every byte but
 * A-Z a-z 0-9 - _ . ~ becomes %XX (upper-case hex), and '/' is kept when
 * KEEP_SLASH. Caller frees; NULL when out of memory. */
char *ffdl_s3_uri_encode(const char *s, int keep_slash);

/* Full-jitter exponential backoff: a delay drawn uniformly from
 * [0, min(CAP_MS, BASE_MS * 2^ATTEMPT)], R being a uniform draw in [0, 1).
 * ATTEMPT counts from 0 (the first retry). */
unsigned ffdl_s3_backoff_ms(unsigned base_ms, unsigned cap_ms, int attempt, double r);

/* Whether a request that failed with HTTP STATUS and S3 error CODE (may be
 * NULL or "") is worth retrying: 5xx, 429, and S3's throttling codes. */
int ffdl_s3_retryable(long status, const char *code);

/* Parses a Content-Range value "bytes START-END/TOTAL". Returns 0, or -1
 * when V is not of that form (including "bytes *\/TOTAL"). */
int ffdl_s3_parse_content_range(const char *v, uint64_t *start, uint64_t *end, uint64_t *total);

/* The part size for an object of SIZE bytes: PART_SIZE, grown in steps of
 * 1 MiB until the object fits in FFDL_S3_MAX_PARTS parts. */
uint64_t ffdl_s3_part_size_for(uint64_t size, uint64_t part_size);

/* PREFIX + "/" + REL, without doubling a '/' that PREFIX ends with; just REL
 * when PREFIX is "". Caller frees; NULL when out of memory. */
char *ffdl_s3_join_key(const char *prefix, const char *rel);

/* The relative path a KEY listed under PREFIX is written to by a prefix
 * download: KEY without PREFIX and without leading '/'. A PREFIX that does
 * not end in '/' names a folder: "data" takes "data/a" as "a" and the object
 * "data" itself as "data", and skips "database/a". Returns 0 and sets *OUT
 * (caller frees), 1 when the key is to be skipped (a "folder" marker ending
 * in '/', the prefix itself when it ends in '/', a key beside the folder),
 * or -1 when the key would escape the target directory ("..", "." or empty
 * components, NUL). */
int ffdl_s3_key_to_relpath(const char *prefix, const char *key, char **out);

/* "us-east-1" for NULL, "" and FfDL's "us-standard"; else REGION. */
const char *ffdl_s3_region(const char *region);

/* Whether BUCKET is a valid bucket name: 3 to 63 characters of a-z 0-9 . -
 * starting and ending with a letter or digit (DNS-compatible, required for
 * virtual-host-style addressing); LEGACY also accepts upper case and '_'. */
int ffdl_s3_bucket_ok(const char *bucket, int legacy);
/* ffdl_s3_bucket_ok's rule in words, for a message. (The manifest schema
 * checks the same rule, in the same words: M.bucket_ok in
 * lua/ffdl/manifest.lua; keep the two alike.) */
const char *ffdl_s3_bucket_rule(int legacy);

/* CRC-32C (Castagnoli), as S3's x-amz-checksum-crc32c: CRC is 0 to start,
 * or the value returned for the bytes before DATA, so that a buffer may be
 * summed in pieces. Carry-less multiplication on AVX-512 vectors
 * (VPCLMULQDQ) where the CPU has it, else SSE4.2's crc32 instruction (three
 * streams at once), else a table; thread-safe. */
uint32_t ffdl_s3_crc32c(uint32_t crc, const void *data, size_t len);

/* CRC as S3 writes it: the 4 bytes big-endian, in base64 ("yZRlqg==").
 * OUT gets 8 characters and a NUL. */
void ffdl_s3_crc32c_base64(uint32_t crc, char out[9]);

#endif
