/* The S3 client's parts that need no server: URI encoding, S3's XML,
 * backoff, ranges, key/path mapping; and the client's own behaviour
 * against a port where nothing listens. */
#include "runner.h"

#include "core/error.h"
#include "store/s3.h"
#include "store/s3_util.h"
#include "store/s3_xml.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void check_encode(const char *in, int keep_slash, const char *want) {
  char *got = ffdl_s3_uri_encode(in, keep_slash);
  CHECK(got);
  if (strcmp(got, want) != 0) {
    fprintf(stderr, "encode(\"%s\") = \"%s\", want \"%s\"\n", in, got, want);
    exit(1);
  }
  free(got);
}

static void test_uri_encode_keys(void) {
  check_encode("plain/key.txt", 1, "plain/key.txt");
  check_encode("a b", 1, "a%20b");
  check_encode("a+b", 1, "a%2Bb");
  check_encode("~-_.", 1, "~-_.");
  check_encode("dir/sub dir/f", 1, "dir/sub%20dir/f");
  check_encode("dir/f", 0, "dir%2Ff");
  /* UTF-8 bytes, upper-case hex */
  check_encode("caf\xc3\xa9", 1, "caf%C3%A9");
  check_encode("\xe6\x97\xa5\xe6\x9c\xac", 1, "%E6%97%A5%E6%9C%AC");
  check_encode("a=b&c?d#e%f", 1, "a%3Db%26c%3Fd%23e%25f");
  check_encode("", 1, "");
  check_encode("../x", 1, "../x");
}

static void test_backoff_full_jitter(void) {
  /* the ceiling doubles from the base and stops at the cap */
  CHECK(ffdl_s3_backoff_ms(200, 20000, 0, 0.0) == 0);
  CHECK(ffdl_s3_backoff_ms(200, 20000, 0, 0.5) == 100);
  CHECK(ffdl_s3_backoff_ms(200, 20000, 1, 0.5) == 200);
  CHECK(ffdl_s3_backoff_ms(200, 20000, 3, 0.5) == 800);
  CHECK(ffdl_s3_backoff_ms(200, 20000, 30, 0.5) == 10000);
  CHECK(ffdl_s3_backoff_ms(200, 20000, 1000, 0.999) <= 20000);
  /* draws never leave [0, ceiling] */
  for (int attempt = 0; attempt < 12; attempt++)
    for (double r = 0; r < 1; r += 0.01) {
      unsigned d = ffdl_s3_backoff_ms(100, 5000, attempt, r);
      unsigned ceiling = 100u << attempt;
      if (ceiling > 5000) ceiling = 5000;
      CHECK(d <= ceiling);
    }
  CHECK(ffdl_s3_backoff_ms(100, 5000, 2, -1) == 0);
  CHECK(ffdl_s3_backoff_ms(100, 5000, 2, 7) <= 400);
}

static void test_retryable(void) {
  CHECK(ffdl_s3_retryable(500, "InternalError"));
  CHECK(ffdl_s3_retryable(503, "SlowDown"));
  CHECK(ffdl_s3_retryable(502, ""));
  CHECK(ffdl_s3_retryable(429, NULL));
  CHECK(ffdl_s3_retryable(400, "RequestTimeout"));
  CHECK(ffdl_s3_retryable(400, "Throttling"));
  CHECK(ffdl_s3_retryable(0, "InternalError")); /* 200 with an <Error> body */
  CHECK(!ffdl_s3_retryable(403, "SignatureDoesNotMatch"));
  CHECK(!ffdl_s3_retryable(403, "InvalidAccessKeyId"));
  CHECK(!ffdl_s3_retryable(404, "NoSuchBucket"));
  CHECK(!ffdl_s3_retryable(400, "EntityTooSmall"));
}

static void test_content_range(void) {
  uint64_t s, e, t;
  CHECK(ffdl_s3_parse_content_range("bytes 0-99/1000", &s, &e, &t) == 0);
  CHECK(s == 0 && e == 99 && t == 1000);
  CHECK(ffdl_s3_parse_content_range("bytes 5368709120-5368709129/5368709130", &s, &e, &t) == 0);
  CHECK(s == 5368709120ull && e == 5368709129ull && t == 5368709130ull);
  CHECK(ffdl_s3_parse_content_range("bytes */1000", &s, &e, &t) != 0);
  CHECK(ffdl_s3_parse_content_range("bytes 10-5/1000", &s, &e, &t) != 0);
  CHECK(ffdl_s3_parse_content_range("bytes 0-1000/1000", &s, &e, &t) != 0);
  CHECK(ffdl_s3_parse_content_range("items 0-1/2", &s, &e, &t) != 0);
  CHECK(ffdl_s3_parse_content_range("bytes 0-1/2x", &s, &e, &t) != 0);
  CHECK(ffdl_s3_parse_content_range("bytes 0-99999999999999999999/1", &s, &e, &t) != 0);
}

static void test_part_size(void) {
  const uint64_t mib = 1024 * 1024;
  CHECK(ffdl_s3_part_size_for(40 * mib, 5 * mib) == 5 * mib);
  CHECK(ffdl_s3_part_size_for(10, 0) == 8 * mib);
  /* 100 GiB in 5 MiB parts would be 20,480 parts: grow until <= 10,000 */
  uint64_t ps = ffdl_s3_part_size_for(100ull * 1024 * mib, 5 * mib);
  CHECK((100ull * 1024 * mib + ps - 1) / ps <= FFDL_S3_MAX_PARTS);
  CHECK(ps % mib == 0 && ps > 5 * mib && ps <= 11 * mib);
}

static void check_rel(const char *prefix, const char *key, int want_rc, const char *want) {
  char *rel = NULL;
  int rc = ffdl_s3_key_to_relpath(prefix, key, &rel);
  if (rc != want_rc || (want && (!rel || strcmp(rel, want) != 0))) {
    fprintf(stderr, "relpath(\"%s\", \"%s\") = %d \"%s\"\n", prefix, key, rc, rel ? rel : "");
    exit(1);
  }
  free(rel);
}

static void test_keys_and_paths(void) {
  char *k = ffdl_s3_join_key("", "a/b");
  CHECK(strcmp(k, "a/b") == 0);
  free(k);
  k = ffdl_s3_join_key("data", "a/b");
  CHECK(strcmp(k, "data/a/b") == 0);
  free(k);
  k = ffdl_s3_join_key("data/", "a");
  CHECK(strcmp(k, "data/a") == 0);
  free(k);
  check_rel("data", "data/a/b.txt", 0, "a/b.txt");
  check_rel("data/", "data/a b+c", 0, "a b+c");
  check_rel("", "x", 0, "x");
  /* a prefix without '/' names a folder or one object, not a string prefix */
  check_rel("da", "data/x", 1, NULL);
  check_rel("sets/digits", "sets/digitsX/junk.txt", 1, NULL);
  check_rel("sets/digits", "sets/digits/train.npz", 0, "train.npz");
  check_rel("sets/digits", "sets/digits", 0, "digits");
  check_rel("data", "data", 0, "data");
  check_rel("x/..", "x/..", -1, NULL);
  check_rel("data/", "data/", 1, NULL);
  check_rel("data/", "data/sub/", 1, NULL);
  check_rel("data/", "data/../../etc/passwd", -1, NULL);
  check_rel("data/", "data/a/../../x", -1, NULL);
  check_rel("data/", "data/./x", -1, NULL);
  check_rel("data/", "data/a//x", -1, NULL);
  check_rel("data/", "other/x", -1, NULL);
  check_rel("", "..", -1, NULL);
  check_rel("", "..x/y..", 0, "..x/y..");
}

static void test_region_and_bucket(void) {
  CHECK(strcmp(ffdl_s3_region(NULL), "us-east-1") == 0);
  CHECK(strcmp(ffdl_s3_region(""), "us-east-1") == 0);
  CHECK(strcmp(ffdl_s3_region("us-standard"), "us-east-1") == 0);
  CHECK(strcmp(ffdl_s3_region("eu-west-1"), "eu-west-1") == 0);
  CHECK(ffdl_s3_bucket_ok("my-bucket.1", 0));
  CHECK(!ffdl_s3_bucket_ok("My_Bucket", 0));
  CHECK(ffdl_s3_bucket_ok("My_Bucket", 1));
  CHECK(!ffdl_s3_bucket_ok("ab", 0));
  CHECK(!ffdl_s3_bucket_ok("-abc", 0));
  CHECK(!ffdl_s3_bucket_ok("abc-", 1));
  CHECK(!ffdl_s3_bucket_ok("a/b/c", 1));
  CHECK(!ffdl_s3_bucket_ok("a b c", 1));
}

/* CRC-32C one bit at a time, straight from the definition. */
static uint32_t crc32c_bitwise(const unsigned char *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  }
  return ~c;
}

static void test_crc32c(void) {
  /* the check value of the Castagnoli CRC, and RFC 3720's vectors */
  CHECK(ffdl_s3_crc32c(0, "123456789", 9) == 0xe3069283u);
  unsigned char v[32];
  memset(v, 0, sizeof v);
  CHECK(ffdl_s3_crc32c(0, v, 32) == 0x8a9136aau);
  memset(v, 0xff, sizeof v);
  CHECK(ffdl_s3_crc32c(0, v, 32) == 0x62a8ab43u);
  for (int i = 0; i < 32; i++)
    v[i] = (unsigned char)i;
  CHECK(ffdl_s3_crc32c(0, v, 32) == 0x46dd794eu);
  CHECK(ffdl_s3_crc32c(0, "", 0) == 0);
  /* long enough for the three-lane path, at odd lengths and alignments,
   * whole and in pieces */
  size_t n = 3 * 4096 * 5 + 123;
  unsigned char *buf = malloc(n + 8);
  CHECK(buf);
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < n + 8; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    buf[i] = (unsigned char)x;
  }
  for (size_t off = 0; off < 8; off += 3) {
    for (size_t len = n - 3 * 4096 - 1; len <= n; len += 3 * 4096 / 2 + 1) {
      uint32_t want = crc32c_bitwise(buf + off, len);
      CHECK(ffdl_s3_crc32c(0, buf + off, len) == want);
      size_t cut = len / 3 + off;
      CHECK(ffdl_s3_crc32c(ffdl_s3_crc32c(0, buf + off, cut), buf + off + cut, len - cut) == want);
    }
  }
  /* every length around the folding path's steps (256, 64 and 16 bytes),
   * from a register that is not 0 */
  for (size_t len = 0; len < 1100; len++) {
    size_t off = len % 5;
    uint32_t want = crc32c_bitwise(buf + off, len);
    uint32_t head = ffdl_s3_crc32c(0, buf + off, len / 7);
    CHECK(ffdl_s3_crc32c(head, buf + off + len / 7, len - len / 7) == want);
  }
  free(buf);
  char b64[9];
  ffdl_s3_crc32c_base64(0xe3069283u, b64);
  CHECK(strcmp(b64, "4waSgw==") == 0);
  ffdl_s3_crc32c_base64(0, b64);
  CHECK(strcmp(b64, "AAAAAA==") == 0);
  ffdl_s3_crc32c_base64(0xffffffffu, b64);
  CHECK(strcmp(b64, "/////w==") == 0);
}

static void test_xml_error(void) {
  const char *body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                     "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not "
                     "exist</Message><BucketName>nope</BucketName><RequestId>1</RequestId></Error>";
  ffdl_s3_xml_error e;
  CHECK(ffdl_s3_xml_parse_error(body, strlen(body), &e) == 0);
  CHECK(strcmp(e.code, "NoSuchBucket") == 0);
  CHECK(strcmp(e.message, "The specified bucket does not exist") == 0);
  CHECK(strcmp(e.bucket, "nope") == 0);
  CHECK(e.key[0] == '\0');

  const char *sig = "<ErrorResponse><Error><Code>X</Code></Error></ErrorResponse>";
  CHECK(ffdl_s3_xml_parse_error(sig, strlen(sig), &e) != 0);
  CHECK(e.code[0] == '\0');

  const char *escaped = "<Error><Code>SignatureDoesNotMatch</Code><Message>a &lt;b&gt; &amp; "
                        "&quot;c&quot;</Message><Key>k &amp; v</Key></Error>";
  CHECK(ffdl_s3_xml_parse_error(escaped, strlen(escaped), &e) == 0);
  CHECK(strcmp(e.message, "a <b> & \"c\"") == 0);
  CHECK(strcmp(e.key, "k & v") == 0);

  CHECK(ffdl_s3_xml_parse_error("", 0, &e) != 0);
  CHECK(ffdl_s3_xml_parse_error("<Error><Code>", 13, &e) != 0);
  CHECK(ffdl_s3_xml_parse_error("not xml", 7, &e) != 0);

  /* a long message is cut, never overflows */
  char big[4096];
  int n = snprintf(big, sizeof big, "<Error><Code>C</Code><Message>");
  memset(big + n, 'm', 3000);
  n += 3000;
  n += snprintf(big + n, sizeof big - (size_t)n, "</Message></Error>");
  CHECK(ffdl_s3_xml_parse_error(big, (size_t)n, &e) == 0);
  CHECK(strlen(e.message) == sizeof e.message - 1);
}

static void test_xml_rejects_doctype(void) {
  const char *bomb = "<?xml version=\"1.0\"?><!DOCTYPE Error [<!ENTITY a \"aaaaaaaaaa\">"
                     "<!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]>"
                     "<Error><Code>&b;</Code></Error>";
  ffdl_s3_xml_error e;
  CHECK(ffdl_s3_xml_parse_error(bomb, strlen(bomb), &e) != 0);
}

typedef struct {
  int n;
  char keys[8][64];
  uint64_t sizes[8];
  char etags[8][64];
} seen;

static void on_obj(void *ud, const char *key, uint64_t size, const char *etag) {
  seen *s = ud;
  CHECK(s->n < 8);
  snprintf(s->keys[s->n], sizeof s->keys[0], "%s", key);
  snprintf(s->etags[s->n], sizeof s->etags[0], "%s", etag);
  s->sizes[s->n++] = size;
}

static void test_xml_list(void) {
  const char *body =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
      "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
      "<Name>b</Name><Prefix>p/</Prefix><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys>"
      "<IsTruncated>true</IsTruncated>"
      "<Contents><Key>p/a b+c</Key><LastModified>x</LastModified>"
      "<ETag>&quot;0123abc&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass>"
      "</Contents>"
      "<Contents><Key>p/caf\xc3\xa9 &amp; &lt;x&gt;</Key><Size>5368709120</Size>"
      "<ETag>\"e-2\"</ETag></Contents>"
      "<Contents><Key>p/empty</Key><Size>0</Size><ETag></ETag></Contents>"
      "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>"
      "</ListBucketResult>";
  seen s = {0};
  ffdl_s3_xml_list out;
  CHECK(ffdl_s3_xml_parse_list(body, strlen(body), on_obj, &s, &out) == 0);
  CHECK(out.truncated == 1);
  CHECK(out.objects == 3 && s.n == 3);
  CHECK(strcmp(out.next_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=") == 0);
  CHECK(strcmp(s.keys[0], "p/a b+c") == 0 && s.sizes[0] == 12);
  CHECK(strcmp(s.etags[0], "0123abc") == 0);
  CHECK(strcmp(s.keys[1], "p/caf\xc3\xa9 & <x>") == 0 && s.sizes[1] == 5368709120ull);
  CHECK(strcmp(s.etags[1], "e-2") == 0);
  CHECK(strcmp(s.keys[2], "p/empty") == 0 && s.sizes[2] == 0 && s.etags[2][0] == '\0');
  free(out.next_token);

  const char *last = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
  seen s2 = {0};
  CHECK(ffdl_s3_xml_parse_list(last, strlen(last), on_obj, &s2, &out) == 0);
  CHECK(!out.truncated && !out.next_token && out.objects == 0);

  const char *err = "<Error><Code>NoSuchBucket</Code></Error>";
  CHECK(ffdl_s3_xml_parse_list(err, strlen(err), on_obj, &s2, &out) != 0);
  CHECK(ffdl_s3_xml_parse_list("<ListBucketResult>", 18, on_obj, &s2, &out) != 0);
  CHECK(!out.next_token);
}

static void test_xml_upload_id(void) {
  const char *body = "<?xml version=\"1.0\"?><InitiateMultipartUploadResult><Bucket>b</Bucket>"
                     "<Key>k</Key><UploadId>VXBsb2FkIElE+/=</UploadId>"
                     "</InitiateMultipartUploadResult>";
  char *id = NULL;
  CHECK(ffdl_s3_xml_parse_upload_id(body, strlen(body), &id) == 0);
  CHECK(strcmp(id, "VXBsb2FkIElE+/=") == 0);
  free(id);
  const char *none = "<InitiateMultipartUploadResult></InitiateMultipartUploadResult>";
  CHECK(ffdl_s3_xml_parse_upload_id(none, strlen(none), &id) != 0 && !id);
  const char *err = "<Error><UploadId>x</UploadId></Error>";
  CHECK(ffdl_s3_xml_parse_upload_id(err, strlen(err), &id) != 0 && !id);
}

typedef struct {
  int n;
  char keys[4][64], ids[4][64];
} uploads_seen;

static void on_upload(void *ud, const char *key, const char *upload_id) {
  uploads_seen *s = ud;
  if (s->n < 4) {
    snprintf(s->keys[s->n], sizeof s->keys[0], "%s", key);
    snprintf(s->ids[s->n], sizeof s->ids[0], "%s", upload_id);
  }
  s->n++;
}

static void test_xml_uploads(void) {
  const char *body =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
      "<ListMultipartUploadsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
      "<Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>"
      "<NextKeyMarker>t-1/model/b.bin</NextKeyMarker>"
      "<NextUploadIdMarker>id+2/=</NextUploadIdMarker><MaxUploads>2</MaxUploads>"
      "<IsTruncated>true</IsTruncated>"
      "<Upload><Key>t-1/a &amp; b.bin</Key><UploadId>id-1</UploadId>"
      "<Initiator><ID>arn</ID><DisplayName>x</DisplayName></Initiator>"
      "<Initiated>2026-12-06T08:00:00.000Z</Initiated></Upload>"
      "<Upload><Key>t-1/model/b.bin</Key><UploadId>id+2/=</UploadId></Upload>"
      "<Upload><Key>t-1/no-id</Key></Upload>"
      "</ListMultipartUploadsResult>";
  uploads_seen s = {0};
  ffdl_s3_xml_uploads out;
  CHECK(ffdl_s3_xml_parse_uploads(body, strlen(body), on_upload, &s, &out) == 0);
  /* the third <Upload> has no id: not one to abort */
  CHECK(out.truncated == 1 && out.uploads == 2 && s.n == 2);
  CHECK(strcmp(s.keys[0], "t-1/a & b.bin") == 0 && strcmp(s.ids[0], "id-1") == 0);
  CHECK(strcmp(s.keys[1], "t-1/model/b.bin") == 0 && strcmp(s.ids[1], "id+2/=") == 0);
  CHECK(out.next_key_marker && strcmp(out.next_key_marker, "t-1/model/b.bin") == 0);
  CHECK(out.next_upload_id_marker && strcmp(out.next_upload_id_marker, "id+2/=") == 0);
  free(out.next_key_marker);
  free(out.next_upload_id_marker);

  const char *none = "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>"
                     "</ListMultipartUploadsResult>";
  uploads_seen s2 = {0};
  CHECK(ffdl_s3_xml_parse_uploads(none, strlen(none), on_upload, &s2, &out) == 0);
  CHECK(!out.truncated && out.uploads == 0 && s2.n == 0 && !out.next_key_marker &&
        !out.next_upload_id_marker);
  /* another document, or one cut short: no markers are kept */
  const char *list = "<ListBucketResult><NextKeyMarker>k</NextKeyMarker></ListBucketResult>";
  CHECK(ffdl_s3_xml_parse_uploads(list, strlen(list), on_upload, &s2, &out) != 0);
  const char *cut = "<ListMultipartUploadsResult><NextKeyMarker>k</NextKeyMarker>";
  CHECK(ffdl_s3_xml_parse_uploads(cut, strlen(cut), on_upload, &s2, &out) != 0);
  CHECK(!out.next_key_marker && s2.n == 0);
}

static void test_checksum_names(void) {
  int c = -1;
  CHECK(ffdl_s3_checksum_parse("crc32c", &c) == 0 && c == FFDL_S3_CHECKSUM_CRC32C);
  CHECK(ffdl_s3_checksum_parse("sha256", &c) == 0 && c == FFDL_S3_CHECKSUM_SHA256);
  /* anything else leaves *OUT alone */
  static const char *const bad[] = {"", "SHA256", "crc32", "sha256 ", "md5", "auto"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    c = -1;
    CHECK(ffdl_s3_checksum_parse(bad[i], &c) == FFDL_EINVALID && c == -1);
  }
  CHECK(ffdl_s3_checksum_parse(NULL, &c) == FFDL_EINVALID && c == -1);
}

/* ---- the client without a server ---------------------------------------- */

static void test_new_rejects_bad_config(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  ffdl_s3 *s3 = NULL;
  ffdl_s3_config c = {.endpoint = "ftp://x", .access_key = "a", .secret_key = "s"};
  CHECK(ffdl_s3_new(&loop, &c, &s3) == FFDL_EINVALID && !s3);
  c.endpoint = "127.0.0.1:9000";
  CHECK(ffdl_s3_new(&loop, &c, &s3) == FFDL_EINVALID);
  c.endpoint = "http://127.0.0.1:9000";
  c.part_size = 1024 * 1024; /* below S3's 5 MiB */
  CHECK(ffdl_s3_new(&loop, &c, &s3) == FFDL_EINVALID);
  c.part_size = 0;
  c.concurrency = -1;
  CHECK(ffdl_s3_new(&loop, &c, &s3) == FFDL_EINVALID);
  c.concurrency = 0;
  c.checksum = 7;
  CHECK(ffdl_s3_new(&loop, &c, &s3) == FFDL_EINVALID && !s3);
  CHECK(uv_loop_close(&loop) == 0);
}

typedef struct {
  int calls, status;
  ffdl_s3_error err;
  int closed;
} result;

static void on_done(void *ud, int status, const ffdl_s3_error *err) {
  result *r = ud;
  r->calls++;
  r->status = status;
  if (err) r->err = *err;
}

static void on_closed(void *ud) {
  ((result *)ud)->closed++;
}

/* A loopback port where nothing listens. */
static int dead_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  socklen_t n = sizeof a;
  CHECK(getsockname(fd, (struct sockaddr *)&a, &n) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

static void test_connection_error_after_retries(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  char endpoint[64];
  snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", dead_port());
  ffdl_s3_config c = {.endpoint = endpoint,
                      .access_key = "AK",
                      .secret_key = "very-secret",
                      .max_retries = 2,
                      .retry_base_ms = 1};
  ffdl_s3 *s3;
  CHECK(ffdl_s3_new(&loop, &c, &s3) == 0);
  result r = {0};
  CHECK(ffdl_s3_put_buffer(s3, "bucket", "a key", "hello", 5, on_done, &r) == 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(r.calls == 1);
  CHECK(r.status == FFDL_EIO);
  CHECK(strcmp(r.err.code, "ConnectionError") == 0);
  CHECK(r.err.http_status == 0);
  CHECK(strcmp(r.err.bucket, "bucket") == 0 && strcmp(r.err.key, "a key") == 0);
  CHECK(!strstr(r.err.message, "very-secret"));
  ffdl_s3_close(s3, on_closed, &r);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(r.closed == 1);
  CHECK(uv_loop_close(&loop) == 0);
}

/* A server that takes the connection and reads nothing: an upload fills the
 * socket buffers, then no byte moves. */
typedef struct {
  ffdl_s3 *s3;
  uv_timer_t stop;
  uint64_t last_bytes, changed_ms;
  int reports, stalled_reports, stalled_retrying;
  result r;
} stall;

static void on_stall_progress(void *ud, const ffdl_s3_progress *p) {
  stall *s = ud;
  uint64_t now = uv_now(s->stop.loop);
  if (s->reports++ == 0 || p->bytes_done != s->last_bytes) {
    s->last_bytes = p->bytes_done;
    s->changed_ms = now;
  } else if (now - s->changed_ms > 2500) {
    s->stalled_reports++;
    s->stalled_retrying += p->retrying;
  }
}

static void on_stall_done(void *ud, int status, const ffdl_s3_error *err) {
  on_done(&((stall *)ud)->r, status, err);
}

static void stop_stalled(uv_timer_t *t) {
  stall *s = t->data;
  uv_close((uv_handle_t *)t, NULL);
  ffdl_s3_close(s->s3, on_closed, &s->r); /* cancels the upload */
}

static void test_a_stalled_transfer_is_reported_and_cancelled_by_close(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t n = sizeof a;
  CHECK(bind(listener, (struct sockaddr *)&a, sizeof a) == 0 && listen(listener, 4) == 0);
  CHECK(getsockname(listener, (struct sockaddr *)&a, &n) == 0);
  char endpoint[64], path[] = "/tmp/ffdl-test-stall-XXXXXX";
  snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", ntohs(a.sin_port));
  int fd = mkstemp(path); /* 48 MiB, sparse: far more than the socket buffers hold */
  CHECK(fd >= 0 && ftruncate(fd, 48 << 20) == 0);
  close(fd);
  /* one PUT (the part size is above the file's size), so that the body flows */
  ffdl_s3_config c = {
      .endpoint = endpoint, .access_key = "AK", .secret_key = "SK", .part_size = 64 << 20};
  stall s = {0};
  CHECK(ffdl_s3_new(&loop, &c, &s.s3) == 0);
  uv_timer_init(&loop, &s.stop);
  s.stop.data = &s;
  uv_timer_start(&s.stop, stop_stalled, 6000, 0);
  CHECK(ffdl_s3_upload_file(s.s3, "bucket", "key", path, on_stall_progress, on_stall_done, &s) ==
        0);
  uv_run(&loop, UV_RUN_DEFAULT);
  unlink(path);
  close(listener);
  CHECK(s.r.calls == 1 && s.r.status == FFDL_EIO && s.r.closed == 1);
  CHECK(s.last_bytes > 0);        /* the body started, */
  CHECK(s.stalled_reports > 0);   /* then stood still for seconds, still reported */
  CHECK(s.stalled_retrying == 0); /* as a wait, not a retry; closing the client cancels it */
  CHECK(uv_loop_close(&loop) == 0);
}

static void test_invalid_arguments_fail_at_once(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  ffdl_s3_config c = {.endpoint = "http://127.0.0.1:1", .access_key = "a", .secret_key = "s"};
  ffdl_s3 *s3;
  CHECK(ffdl_s3_new(&loop, &c, &s3) == 0);
  result r = {0};
  CHECK(ffdl_s3_put_buffer(s3, "ab", "k", "x", 1, on_done, &r) == FFDL_EINVALID);
  CHECK(ffdl_s3_put_buffer(s3, "bucket", "", "x", 1, on_done, &r) == FFDL_EINVALID);
  CHECK(ffdl_s3_get_buffer(s3, "bucket", NULL, NULL, on_done, &r) == FFDL_EINVALID);
  CHECK(ffdl_s3_put_buffer(s3, "bucket", "k", "x", 65u * 1024 * 1024, on_done, &r) == FFDL_ETOOBIG);
  ffdl_s3_close(s3, on_closed, &r);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(r.calls == 0 && r.closed == 1);
  CHECK(uv_loop_close(&loop) == 0);
}

typedef struct {
  ffdl_s3 *s3;
  result *closed;
} closer;

static void on_close_timer(uv_timer_t *t) {
  closer *c = t->data;
  ffdl_s3_close(c->s3, on_closed, c->closed);
}

static void test_close_cancels_running_operations(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  char endpoint[64];
  snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", dead_port());
  /* long backoff: the operations are still waiting when close comes */
  ffdl_s3_config c = {.endpoint = endpoint,
                      .access_key = "a",
                      .secret_key = "s",
                      .max_retries = 5,
                      .retry_base_ms = 60000};
  ffdl_s3 *s3;
  CHECK(ffdl_s3_new(&loop, &c, &s3) == 0);
  result r1 = {0}, r2 = {0}, closed = {0};
  CHECK(ffdl_s3_put_buffer(s3, "bucket", "k", "x", 1, on_done, &r1) == 0);
  char dir[] = "/tmp/ffdl-s3-test-XXXXXX";
  CHECK(mkdtemp(dir));
  char path[128];
  snprintf(path, sizeof path, "%s/out", dir);
  CHECK(ffdl_s3_download_file(s3, "bucket", "k", path, NULL, on_done, &r2) == 0);
  /* close while they wait in backoff (or earlier: the outcome is the same,
   * so this timer is no wait for a condition) */
  closer cl = {.s3 = s3, .closed = &closed};
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  t.data = &cl;
  uv_timer_start(&t, on_close_timer, 100, 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&t, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(r1.calls == 1 && r2.calls == 1 && closed.closed == 1);
  CHECK(strcmp(r1.err.code, "Canceled") == 0);
  CHECK(strcmp(r2.err.code, "Canceled") == 0);
  /* no PATH.partial is left behind */
  char partial[160];
  snprintf(partial, sizeof partial, "%s.partial", path);
  CHECK(access(partial, F_OK) != 0 && access(path, F_OK) != 0);
  rmdir(dir);
  CHECK(uv_loop_close(&loop) == 0);
}

typedef struct {
  ffdl_s3 *s3;
  result r;
} self_closing;

static void on_done_close(void *ud, int status, const ffdl_s3_error *err) {
  self_closing *c = ud;
  on_done(&c->r, status, err);
  ffdl_s3_close(c->s3, on_closed, &c->r);
  ffdl_s3_close(c->s3, on_closed, &c->r); /* twice: ignored */
}

static void test_close_from_done_callback(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  char endpoint[64];
  snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", dead_port());
  ffdl_s3_config c = {
      .endpoint = endpoint, .access_key = "a", .secret_key = "s", .max_retries = -1};
  self_closing sc = {0};
  CHECK(ffdl_s3_new(&loop, &c, &sc.s3) == 0);
  CHECK(ffdl_s3_get_buffer(sc.s3, "bucket", "k", NULL, on_done_close, &sc) == 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(sc.r.calls == 1 && sc.r.closed == 1);
  CHECK(strcmp(sc.r.err.code, "ConnectionError") == 0);
  CHECK(uv_loop_close(&loop) == 0);
}

int main(int argc, char **argv) {
  static const test_case cases[] = {
      {"uri_encode_keys", test_uri_encode_keys},
      {"backoff_full_jitter", test_backoff_full_jitter},
      {"retryable", test_retryable},
      {"content_range", test_content_range},
      {"part_size", test_part_size},
      {"keys_and_paths", test_keys_and_paths},
      {"region_and_bucket", test_region_and_bucket},
      {"crc32c", test_crc32c},
      {"xml_error", test_xml_error},
      {"xml_rejects_doctype", test_xml_rejects_doctype},
      {"xml_list", test_xml_list},
      {"xml_uploads", test_xml_uploads},
      {"xml_upload_id", test_xml_upload_id},
      {"checksum_names", test_checksum_names},
      {"new_rejects_bad_config", test_new_rejects_bad_config},
      {"connection_error_after_retries", test_connection_error_after_retries},
      {"a_stalled_transfer_is_reported_and_cancelled_by_close",
       test_a_stalled_transfer_is_reported_and_cancelled_by_close},
      {"invalid_arguments_fail_at_once", test_invalid_arguments_fail_at_once},
      {"close_cancels_running_operations", test_close_cancels_running_operations},
      {"close_from_done_callback", test_close_from_done_callback},
      {NULL, NULL},
  };
  return run_tests(cases, argc, argv);
}
