/*
 * An S3 client on the libuv loop: libcurl's multi interface with AWS
 * Signature V4 (CURLOPT_AWS_SIGV4, plus an explicit x-amz-content-sha256
 * header, which libcurl 7.88 needs). Works with AWS S3 and S3-compatible
 * stores (MinIO, Ceph, IBM COS, moto). Never blocks the loop: files are
 * opened, hashed (when SHA-256 is asked for) and renamed on the thread
 * pool; upload bodies are read from the file straight into libcurl's
 * buffer, and downloads written in blocks of 256 KiB; memory stays
 * constant whatever the object size.
 */
#ifndef FFDL_STORE_S3_H
#define FFDL_STORE_S3_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct ffdl_s3 ffdl_s3;

/* The bounds of ffdl_s3_config's part_size (S3's own, for a multipart
 * part) and concurrency, for those who check a setting before a client is
 * made (manifests, job scripts, the server's config). */
#define FFDL_S3_MIN_PART_SIZE ((uint64_t)5 << 20)
#define FFDL_S3_MAX_PART_SIZE ((uint64_t)5 << 30)
#define FFDL_S3_MAX_CONCURRENCY 256

typedef struct {
  const char *endpoint;   /* FfDL's auth_url: "http://127.0.0.1:9000", "https://s3.amazonaws.com" */
  const char *access_key; /* FfDL's user_name */
  const char *secret_key; /* FfDL's password: never logged */
  const char *region;     /* NULL or FfDL's "us-standard": us-east-1 */
  int virtual_host;       /* 1: https://bucket.host/key (bucket names must then be DNS names);
                           * 0 (default): https://host/bucket/key */
  size_t part_size;       /* multipart part size, and a download's first range; 0: 8 MiB
                           * (5 MiB to 5 GiB). A large download's later ranges are
                           * longer: about 4 per parallel request, up to 64 MiB */
  int concurrency;        /* parallel requests, client-wide (also the parts in flight of one
                           * file and the files in flight of a directory); 0: 8 */
  int max_retries;        /* per request, on 5xx, throttling and connection errors; 0: 5;
                           * < 0: none */
  unsigned retry_base_ms; /* first backoff; 0: 200 ms (exponential, with full jitter) */
  int checksum;           /* FFDL_S3_CHECKSUM_*: how upload bodies are checked */
  const char *ca_bundle;  /* PEM file of the CAs to trust for https; NULL: $AWS_CA_BUNDLE, else
                           * the system's store. Certificates are always verified. */
} ffdl_s3_config;

/* What S3 checks every uploaded body (PutObject, UploadPart) against:
 * CRC32C (the default, AUTO): x-amz-checksum-crc32c, unsigned body
 *   (UNSIGNED-PAYLOAD): for a file in an aws-chunked trailer
 *   (STREAMING-UNSIGNED-PAYLOAD-TRAILER), summed as it is read and sent,
 *   once; for memory in a signed header. Checked by S3 and kept with the
 *   object (multipart: per part, and the list of parts in
 *   CompleteMultipartUpload), at a tenth of SHA-256's CPU. It catches
 *   corruption, not tampering: whoever changes the body on the way can
 *   recompute the sum. The AWS SDKs default to a CRC32-family sum too;
 * SHA256: the SHA-256 in the signature (x-amz-content-sha256), so the body
 *   is signed too: over plain http, a body changed on the way fails the
 *   signature (over https TLS already ensures that). A file is read twice
 *   (hashed, then sent), ~0.6 CPU s/GiB more. */
enum { FFDL_S3_CHECKSUM_AUTO = 0, FFDL_S3_CHECKSUM_SHA256, FFDL_S3_CHECKSUM_CRC32C };

/* The checksum's name as users write it (a manifest's connection.checksum,
 * a job script's ffdl.s3 connection, ffdl-server's s3_checksum, s3tool's
 * --checksum): "crc32c" or "sha256", lower case. Returns 0 and sets *OUT
 * to FFDL_S3_CHECKSUM_CRC32C or _SHA256, or FFDL_EINVALID (*OUT untouched)
 * for any other TEXT, NULL included. TEXT is borrowed. */
int ffdl_s3_checksum_parse(const char *text, int *out);
/* The names ffdl_s3_checksum_parse accepts, for error messages. */
#define FFDL_S3_CHECKSUM_NAMES "crc32c or sha256"

/* The addressing style as users write it (connection.addressing_style,
 * ffdl-server's s3_addressing_style): "path" (*VIRTUAL_HOST = 0) or
 * "virtual" (1). Returns 0, or FFDL_EINVALID (*VIRTUAL_HOST untouched) for
 * any other TEXT, NULL included. */
int ffdl_s3_addressing_parse(const char *text, int *virtual_host);
#define FFDL_S3_ADDRESSING_NAMES "path or virtual"

/* NULL when ENDPOINT can be a client's endpoint (http:// or https://, a
 * host, an optional path), else what is wrong with it, to follow the
 * field's name in a message ("must start with http:// or https://"). */
const char *ffdl_s3_endpoint_problem(const char *endpoint);

/* What S3 said when a request failed for good. */
typedef struct {
  int http_status;   /* 0 for a connection error */
  char code[64];     /* S3's code: "NoSuchBucket", "InvalidAccessKeyId", ... or "ConnectionError" */
  char message[512]; /* S3's message, or curl's */
  char bucket[256];
  char key[1024];
} ffdl_s3_error;

/* "S3 CODE (HTTP N): MESSAGE; bucket B, key K" into OUT, for the messages
 * users read: the parts it has (no "(HTTP N)" when no answer came, as on a
 * connection error; "S3 Error: " for a NULL ERR). */
void ffdl_s3_error_text(const ffdl_s3_error *err, char *out, size_t cap);

typedef struct {
  uint64_t bytes_done, bytes_total; /* total is 0 while unknown (a listing in progress) */
  uint64_t objects_done, objects_total;
  int retrying; /* a request waits to be tried again, or was since the last report */
} ffdl_s3_progress;

/* STATUS is 0 or a negative FFDL_E* code; ERR is set (borrowed) when status != 0.
 * FFDL_ENOENT: HTTP 404 (NoSuchBucket, NoSuchKey) or a missing local file;
 * FFDL_ETOOBIG: an in-memory GET over 64 MiB; FFDL_EINVALID: an unsafe key in a
 * prefix download; FFDL_EIO: everything else, S3's code in ERR->code
 * ("Canceled" when ffdl_s3_close stopped the operation). */
typedef void (*ffdl_s3_done_cb)(void *ud, int status, const ffdl_s3_error *err);
/* Called at most every 250 ms while a transfer runs, and once with the
 * final figures just before a successful DONE. */
typedef void (*ffdl_s3_progress_cb)(void *ud, const ffdl_s3_progress *progress);
/* One object of a listing (borrowed strings; ETAG without its quotes). */
typedef void (*ffdl_s3_object_cb)(void *ud, const char *key, uint64_t size, const char *etag);

/* An incomplete multipart upload that ffdl_s3_abort_uploads aborted (or
 * found gone when it tried): borrowed strings. */
typedef void (*ffdl_s3_upload_cb)(void *ud, const char *key, const char *upload_id);

/* All strings in CONFIG are copied. Caller closes. */
int ffdl_s3_new(uv_loop_t *loop, const ffdl_s3_config *config, ffdl_s3 **out);
/* Cancels what runs (their done callbacks get FFDL_EIO with code "Canceled";
 * a canceled multipart upload is not aborted, PATH.partial files are
 * removed), then frees the client and calls CB (may be NULL) from the loop.
 * May be called from any callback of the client. */
void ffdl_s3_close(ffdl_s3 *s3, void (*cb)(void *ud), void *ud);

/* Each operation below: returns 0 and later calls DONE exactly once, or
 * returns a negative code at once and never calls DONE. PROGRESS may be NULL. */

int ffdl_s3_create_bucket(ffdl_s3 *s3, const char *bucket, ffdl_s3_done_cb done, void *ud);
/* ListObjectsV2 with pagination; OBJECT is called for every key under PREFIX. */
int ffdl_s3_list(ffdl_s3 *s3, const char *bucket, const char *prefix, ffdl_s3_object_cb object,
                 ffdl_s3_done_cb done, void *ud);
/* Aborts every incomplete multipart upload under PREFIX: lists them all
 * (ListMultipartUploads, with pagination), then aborts each
 * (AbortMultipartUpload), calling ABORTED (may be NULL) for each. Whoever
 * started them: call it only where nothing else uploads under PREFIX, as
 * before a job's results go to <training-id>/, where it removes what an
 * earlier run that crashed mid-upload left (invisible, but stored and
 * billed until a lifecycle rule removes it). */
int ffdl_s3_abort_uploads(ffdl_s3 *s3, const char *bucket, const char *prefix,
                          ffdl_s3_upload_cb aborted, ffdl_s3_done_cb done, void *ud);
/* Small objects through memory (at most 64 MiB). PUT copies DATA. GET hands
 * the body to BODY (borrowed) before DONE. */
int ffdl_s3_put_buffer(ffdl_s3 *s3, const char *bucket, const char *key, const void *data,
                       size_t len, ffdl_s3_done_cb done, void *ud);
int ffdl_s3_get_buffer(ffdl_s3 *s3, const char *bucket, const char *key,
                       void (*body)(void *ud, const void *data, size_t len), ffdl_s3_done_cb done,
                       void *ud);
/* A file: one PUT when small, else multipart with parts in parallel and a
 * checksum per part (config.checksum), each part read from the file once:
 * the bytes sent are the bytes summed. A failed multipart upload is
 * aborted, so no partial object is ever visible. */
int ffdl_s3_upload_file(ffdl_s3 *s3, const char *bucket, const char *key, const char *path,
                        ffdl_s3_progress_cb progress, ffdl_s3_done_cb done, void *ud);
/* A file: ranged GETs in parallel into PATH.partial, then renamed to PATH.
 * Checked: every range is answered 206 with exactly its bytes, every range
 * after the first carries If-Match with the first answer's ETag (an object
 * replaced meanwhile fails with 412 instead of mixing two versions), and
 * the file's final size is the object's. An object that one answer holds
 * whole (smaller than a part) and that was uploaded in one part with a
 * CRC32C is checked against it too (x-amz-checksum-mode: the sum is taken
 * as the bytes arrive, ~0.02 CPU s/GiB with AVX-512, 0.06 without); larger
 * or multipart objects are not hashed again: S3 returns no sum for an
 * arbitrary range, a multipart object's sum is one of its parts' sums, and
 * its ETag is no content hash.
 * TCP's checksum (TLS's MAC over https) covers the transfer. get_buffer
 * checks the CRC32C of a single-part object in the same way. */
int ffdl_s3_download_file(ffdl_s3 *s3, const char *bucket, const char *key, const char *path,
                          ffdl_s3_progress_cb progress, ffdl_s3_done_cb done, void *ud);
/* Every file under DIR to PREFIX/relative-path (PREFIX may be ""). */
int ffdl_s3_upload_dir(ffdl_s3 *s3, const char *bucket, const char *prefix, const char *dir,
                       ffdl_s3_progress_cb progress, ffdl_s3_done_cb done, void *ud);
/* Every object under PREFIX into DIR/key-without-prefix (directories made as
 * needed; keys ending in '/' skipped). PREFIX "data" is the folder data/ (or
 * the object "data"), not every key that starts with "data": see
 * ffdl_s3_key_to_relpath. A key with ".", ".." or empty path
 * components fails the whole operation before anything is written. */
int ffdl_s3_download_prefix(ffdl_s3 *s3, const char *bucket, const char *prefix, const char *dir,
                            ffdl_s3_progress_cb progress, ffdl_s3_done_cb done, void *ud);

#endif
