/*
 * The XML bodies of S3's answers, parsed with expat: error bodies,
 * ListObjectsV2 and ListMultipartUploads pages, CreateMultipartUpload's
 * upload id. Internal to
 * src/store/s3*.c; exposed in a header for tests/unit/test_s3.c.
 */
#ifndef FFDL_STORE_S3_XML_H
#define FFDL_STORE_S3_XML_H

#include <stddef.h>
#include <stdint.h>

/* S3's <Error>: each field is "" when absent; longer values are cut. */
typedef struct {
  char code[64];
  char message[512];
  char bucket[256]; /* <BucketName> */
  char key[1024];   /* <Key> */
} ffdl_s3_xml_error;

/* Parses an error body. Returns 0 when BODY is a well-formed document whose
 * root is <Error>, -1 otherwise (then *OUT is all ""). */
int ffdl_s3_xml_parse_error(const char *body, size_t len, ffdl_s3_xml_error *out);

/* One <Contents> of a listing: KEY and ETAG are borrowed, ETAG without its
 * quotes. */
typedef void (*ffdl_s3_xml_object_fn)(void *ud, const char *key, uint64_t size, const char *etag);

typedef struct {
  int truncated;    /* <IsTruncated>true</IsTruncated> */
  char *next_token; /* <NextContinuationToken>, caller frees; NULL when absent */
  size_t objects;   /* how many times OBJECT was called */
} ffdl_s3_xml_list;

/* Parses a ListObjectsV2 page, calling OBJECT for each <Contents> in order.
 * Returns 0, or -1 when BODY is not a ListBucketResult (*OUT then holds no
 * token). OBJECT may have been called before a late syntax error. */
int ffdl_s3_xml_parse_list(const char *body, size_t len, ffdl_s3_xml_object_fn object, void *ud,
                           ffdl_s3_xml_list *out);

/* One <Upload> of a ListMultipartUploadsResult (borrowed strings). */
typedef void (*ffdl_s3_xml_upload_fn)(void *ud, const char *key, const char *upload_id);

typedef struct {
  int truncated;               /* <IsTruncated>true</IsTruncated> */
  char *next_key_marker;       /* <NextKeyMarker>, caller frees; NULL when absent */
  char *next_upload_id_marker; /* <NextUploadIdMarker>, likewise */
  size_t uploads;              /* how many times UPLOAD was called */
} ffdl_s3_xml_uploads;

/* Parses a ListMultipartUploads page, calling UPLOAD for each <Upload> that
 * has a key and an upload id, in order. Returns 0, or -1 when BODY is not a
 * ListMultipartUploadsResult (*OUT then holds no marker). UPLOAD may have
 * been called before a late syntax error. */
int ffdl_s3_xml_parse_uploads(const char *body, size_t len, ffdl_s3_xml_upload_fn upload, void *ud,
                              ffdl_s3_xml_uploads *out);

/* The <UploadId> of an InitiateMultipartUploadResult: caller frees *OUT.
 * Returns 0, or -1 when absent or malformed. */
int ffdl_s3_xml_parse_upload_id(const char *body, size_t len, char **out);

#endif
