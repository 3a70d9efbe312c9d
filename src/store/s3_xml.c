/*
 * s3_xml.c: S3's XML answers, parsed with expat in one pass.
 * Owns: the element walk (a name stack and the text of the innermost
 * element) and the four documents the client reads.
 * Must not: keep state between calls, do I/O, or accept a DOCTYPE (no
 * entity expansion ever runs on a server's answer).
 */
#include "store/s3_xml.h"

#include <expat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 8
#define MAX_NAME 48
#define MAX_TEXT (64 * 1024)

typedef struct walk walk;
/* Called at the end of every element of depth DEPTH (the root is 1). */
typedef void (*end_fn)(walk *w, int depth, const char *name, const char *text, size_t len);

struct walk {
  XML_Parser parser;
  int depth;
  char names[MAX_DEPTH + 1][MAX_NAME];
  char *text;
  size_t text_len, text_cap;
  int failed;
  end_fn end;
  void *ud;
};

/* The local part of a possibly prefixed name. */
static const char *local_name(const char *name) {
  const char *colon = strrchr(name, ':');
  return colon ? colon + 1 : name;
}

static void on_start(void *ud, const XML_Char *name, const XML_Char **attrs) {
  walk *w = ud;
  (void)attrs;
  w->depth++;
  if (w->depth <= MAX_DEPTH) snprintf(w->names[w->depth], MAX_NAME, "%s", local_name(name));
  w->text_len = 0;
}

static void on_end(void *ud, const XML_Char *name) {
  walk *w = ud;
  (void)name;
  if (w->depth <= MAX_DEPTH && w->end) {
    w->text[w->text_len] = '\0';
    w->end(w, w->depth, w->names[w->depth], w->text, w->text_len);
  }
  w->depth--;
  w->text_len = 0;
}

static void on_text(void *ud, const XML_Char *s, int len) {
  walk *w = ud;
  if (len <= 0) return;
  size_t n = (size_t)len;
  if (w->text_len + n > MAX_TEXT) n = MAX_TEXT - w->text_len;
  memcpy(w->text + w->text_len, s, n);
  w->text_len += n;
}

static void on_doctype(void *ud, const XML_Char *name, const XML_Char *sysid, const XML_Char *pubid,
                       int has_internal_subset) {
  walk *w = ud;
  (void)name, (void)sysid, (void)pubid, (void)has_internal_subset;
  w->failed = 1;
  XML_StopParser(w->parser, XML_FALSE);
}

/* Walks BODY; returns 0 when it is well-formed and its root is ROOT. */
static int walk_doc(const char *body, size_t len, const char *root, end_fn end, void *ud) {
  walk w = {0};
  w.text = malloc(MAX_TEXT + 1);
  w.parser = XML_ParserCreate("UTF-8");
  if (!w.text || !w.parser) {
    free(w.text);
    if (w.parser) XML_ParserFree(w.parser);
    return -1;
  }
  w.end = end;
  w.ud = ud;
  XML_SetUserData(w.parser, &w);
  XML_SetElementHandler(w.parser, on_start, on_end);
  XML_SetCharacterDataHandler(w.parser, on_text);
  XML_SetStartDoctypeDeclHandler(w.parser, on_doctype);
  /* expat takes an int length: feed large bodies in slices */
  int ok = 1;
  size_t off = 0;
  do {
    size_t n = len - off > (1u << 30) ? (1u << 30) : len - off;
    int final = off + n == len;
    if (XML_Parse(w.parser, body + off, (int)n, final) != XML_STATUS_OK) ok = 0;
    off += n;
  } while (ok && off < len);
  if (len == 0) ok = 0;
  int rc = ok && !w.failed && strcmp(w.names[1], root) == 0 ? 0 : -1;
  XML_ParserFree(w.parser);
  free(w.text);
  return rc;
}

static void copy_field(char *dst, size_t cap, const char *text) {
  snprintf(dst, cap, "%s", text);
}

static void error_end(walk *w, int depth, const char *name, const char *text, size_t len) {
  ffdl_s3_xml_error *e = w->ud;
  (void)len;
  if (depth != 2 || strcmp(w->names[1], "Error") != 0) return;
  if (strcmp(name, "Code") == 0)
    copy_field(e->code, sizeof e->code, text);
  else if (strcmp(name, "Message") == 0)
    copy_field(e->message, sizeof e->message, text);
  else if (strcmp(name, "BucketName") == 0)
    copy_field(e->bucket, sizeof e->bucket, text);
  else if (strcmp(name, "Key") == 0)
    copy_field(e->key, sizeof e->key, text);
}

int ffdl_s3_xml_parse_error(const char *body, size_t len, ffdl_s3_xml_error *out) {
  memset(out, 0, sizeof *out);
  if (walk_doc(body, len, "Error", error_end, out) != 0) {
    memset(out, 0, sizeof *out);
    return -1;
  }
  return 0;
}

/* Replaces *FIELD with a copy of TEXT; stops the walk when out of memory. */
static void keep_text(walk *w, char **field, const char *text) {
  free(*field);
  if (!(*field = strdup(text))) {
    w->failed = 1;
    XML_StopParser(w->parser, XML_FALSE);
  }
}

typedef struct {
  ffdl_s3_xml_object_fn object;
  void *ud;
  ffdl_s3_xml_list *out;
  char *key;
  char etag[256];
  uint64_t size;
  int in_contents;
} list_state;

static void list_end(walk *w, int depth, const char *name, const char *text, size_t len) {
  list_state *st = w->ud;
  if (strcmp(w->names[1], "ListBucketResult") != 0) return;
  if (depth == 3 && strcmp(w->names[2], "Contents") == 0) {
    if (strcmp(name, "Key") == 0) {
      keep_text(w, &st->key, text);
    } else if (strcmp(name, "Size") == 0) {
      st->size = strtoull(text, NULL, 10);
    } else if (strcmp(name, "ETag") == 0) {
      const char *t = text;
      size_t n = len;
      if (n >= 2 && t[0] == '"' && t[n - 1] == '"') t++, n -= 2;
      if (n >= sizeof st->etag) n = sizeof st->etag - 1;
      memcpy(st->etag, t, n);
      st->etag[n] = '\0';
    }
    return;
  }
  if (depth != 2) return;
  if (strcmp(name, "Contents") == 0) {
    if (st->key && st->object) st->object(st->ud, st->key, st->size, st->etag);
    if (st->key) st->out->objects++;
    free(st->key);
    st->key = NULL;
    st->size = 0;
    st->etag[0] = '\0';
  } else if (strcmp(name, "IsTruncated") == 0) {
    st->out->truncated = strcmp(text, "true") == 0;
  } else if (strcmp(name, "NextContinuationToken") == 0) {
    keep_text(w, &st->out->next_token, text);
  }
}

int ffdl_s3_xml_parse_list(const char *body, size_t len, ffdl_s3_xml_object_fn object, void *ud,
                           ffdl_s3_xml_list *out) {
  memset(out, 0, sizeof *out);
  list_state st = {.object = object, .ud = ud, .out = out};
  int rc = walk_doc(body, len, "ListBucketResult", list_end, &st);
  free(st.key);
  if (rc != 0) {
    free(out->next_token);
    out->next_token = NULL;
  }
  return rc;
}

typedef struct {
  ffdl_s3_xml_upload_fn upload;
  void *ud;
  ffdl_s3_xml_uploads *out;
  char *key, *upload_id;
} uploads_state;

static void uploads_end(walk *w, int depth, const char *name, const char *text, size_t len) {
  uploads_state *st = w->ud;
  (void)len;
  if (strcmp(w->names[1], "ListMultipartUploadsResult") != 0) return;
  if (depth == 3 && strcmp(w->names[2], "Upload") == 0) {
    if (strcmp(name, "Key") == 0)
      keep_text(w, &st->key, text);
    else if (strcmp(name, "UploadId") == 0)
      keep_text(w, &st->upload_id, text);
    return;
  }
  if (depth != 2) return;
  if (strcmp(name, "Upload") == 0) {
    if (st->key && st->upload_id && *st->upload_id) {
      if (st->upload) st->upload(st->ud, st->key, st->upload_id);
      st->out->uploads++;
    }
    free(st->key);
    free(st->upload_id);
    st->key = st->upload_id = NULL;
  } else if (strcmp(name, "IsTruncated") == 0) {
    st->out->truncated = strcmp(text, "true") == 0;
  } else if (strcmp(name, "NextKeyMarker") == 0) {
    keep_text(w, &st->out->next_key_marker, text);
  } else if (strcmp(name, "NextUploadIdMarker") == 0) {
    keep_text(w, &st->out->next_upload_id_marker, text);
  }
}

int ffdl_s3_xml_parse_uploads(const char *body, size_t len, ffdl_s3_xml_upload_fn upload, void *ud,
                              ffdl_s3_xml_uploads *out) {
  memset(out, 0, sizeof *out);
  uploads_state st = {.upload = upload, .ud = ud, .out = out};
  int rc = walk_doc(body, len, "ListMultipartUploadsResult", uploads_end, &st);
  free(st.key);
  free(st.upload_id);
  if (rc != 0) {
    free(out->next_key_marker);
    free(out->next_upload_id_marker);
    out->next_key_marker = out->next_upload_id_marker = NULL;
  }
  return rc;
}

static void upload_id_end(walk *w, int depth, const char *name, const char *text, size_t len) {
  char **id = w->ud;
  (void)len;
  if (depth == 2 && strcmp(name, "UploadId") == 0 && !*id) *id = strdup(text);
}

int ffdl_s3_xml_parse_upload_id(const char *body, size_t len, char **out) {
  *out = NULL;
  if (walk_doc(body, len, "InitiateMultipartUploadResult", upload_id_end, out) != 0 || !*out ||
      !**out) {
    free(*out);
    *out = NULL;
    return -1;
  }
  return 0;
}
