/*
 * http.c: h2o plumbing for the REST API.
 * Owns: listening, accepting, request helpers, JSON/error/file responses
 * and flow-controlled streams. Must not: know routes, jobs or users.
 */
#include "api/http.h"
#include "core/error.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
  h2o_handler_t super;
  ffdl_http *http;
} handler;

struct ffdl_http {
  uv_loop_t *loop;
  uv_tcp_t listener;
  h2o_globalconf_t config;
  h2o_context_t ctx;
  h2o_accept_ctx_t accept_ctx;
  ffdl_http_handler handler;
  void *ud;
  int port;
};

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
  ffdl_http *http = ((handler *)self)->http;
  http->handler(http->ud, req);
  return 0;
}

static void on_accept(uv_stream_t *listener, int status) {
  ffdl_http *http = listener->data;
  if (status != 0) return;
  uv_tcp_t *conn = malloc(sizeof *conn);
  if (!conn) return;
  uv_tcp_init(listener->loop, conn);
  if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
    uv_close((uv_handle_t *)conn, (uv_close_cb)free);
    return;
  }
  h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)conn, (uv_close_cb)free);
  h2o_accept(&http->accept_ctx, sock);
}

int ffdl_http_listen(uv_loop_t *loop, const char *host, int port, size_t max_body,
                     ffdl_http_handler fn, void *ud, ffdl_http **out, char **err) {
  *out = NULL;
  *err = NULL;
  ffdl_http *http = calloc(1, sizeof *http);
  if (!http) return FFDL_ENOMEM;
  http->loop = loop;
  http->handler = fn;
  http->ud = ud;
  h2o_config_init(&http->config);
  http->config.max_request_entity_size = max_body;
  h2o_hostconf_t *host_conf =
      h2o_config_register_host(&http->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t *path_conf = h2o_config_register_path(host_conf, "/", 0);
  handler *h = (handler *)h2o_create_handler(path_conf, sizeof *h);
  h->super.on_req = on_req;
  h->http = http;
  h2o_context_init(&http->ctx, loop, &http->config);
  http->accept_ctx.ctx = &http->ctx;
  http->accept_ctx.hosts = http->config.hosts;

  struct sockaddr_in addr;
  int rc = uv_ip4_addr(host, port, &addr);
  uv_tcp_init(loop, &http->listener);
  http->listener.data = http;
  if (rc == 0) rc = uv_tcp_bind(&http->listener, (struct sockaddr *)&addr, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&http->listener, 512, on_accept);
  if (rc != 0) {
    char msg[256];
    snprintf(msg, sizeof msg, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
    *err = strdup(msg);
    uv_close((uv_handle_t *)&http->listener, NULL);
    return FFDL_EIO; /* the struct stays allocated: the loop still references the handle */
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&http->listener, (struct sockaddr *)&bound, &len);
  http->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
  *out = http;
  return FFDL_OK;
}

int ffdl_http_port(const ffdl_http *http) {
  return http->port;
}

void ffdl_http_stop(ffdl_http *http) {
  if (http && !uv_is_closing((uv_handle_t *)&http->listener))
    uv_close((uv_handle_t *)&http->listener, NULL);
}

void ffdl_http_header(h2o_req_t *req, const char *name, const char *value) {
  h2o_iovec_t n = h2o_strdup(&req->pool, name, SIZE_MAX);
  h2o_iovec_t v = h2o_strdup(&req->pool, value, SIZE_MAX);
  h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 1, NULL, v.base, v.len);
}

void ffdl_http_text(h2o_req_t *req, int status, const char *content_type, const char *body,
                    size_t len) {
  req->res.status = status;
  req->res.reason = status < 300 ? "OK" : "Error";
  req->res.content_length = len;
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type,
                 strlen(content_type));
  static h2o_generator_t generator = {NULL, NULL};
  h2o_iovec_t buf = h2o_strdup(&req->pool, body, len);
  h2o_start_response(req, &generator);
  h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

void ffdl_http_json(h2o_req_t *req, int status, json_t *body) {
  char *text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
  json_decref(body);
  if (!text) return ffdl_http_text(req, 500, "text/plain", "out of memory", 13);
  ffdl_http_text(req, status, "application/json", text, strlen(text));
  free(text);
}

void ffdl_http_error(h2o_req_t *req, int status, const char *error, const char *description) {
  ffdl_http_json(req, status,
                 json_pack("{s:i,s:s,s:s}", "code", status, "error", error, "description",
                           description ? description : ""));
}

void ffdl_http_file(h2o_req_t *req, const char *path, const char *content_type,
                    const char *download_name) {
  FILE *f = fopen(path, "rb");
  struct stat st;
  if (!f || fstat(fileno(f), &st) != 0 || st.st_size > (off_t)(1u << 30)) {
    if (f) fclose(f);
    return ffdl_http_error(req, 404, "Not Found", "the file is not available");
  }
  char *data = h2o_mem_alloc_pool(&req->pool, (size_t)st.st_size + 1);
  size_t got = fread(data, 1, (size_t)st.st_size, f);
  fclose(f);
  if (download_name) {
    char disposition[512];
    snprintf(disposition, sizeof disposition, "attachment; filename=\"%s\"", download_name);
    ffdl_http_header(req, "content-disposition", disposition);
  }
  req->res.status = 200;
  req->res.reason = "OK";
  req->res.content_length = got;
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type,
                 strlen(content_type));
  static h2o_generator_t generator = {NULL, NULL};
  h2o_iovec_t buf = h2o_iovec_init(data, got);
  h2o_start_response(req, &generator);
  h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

int ffdl_http_method_is(const h2o_req_t *req, const char *method) {
  return h2o_memis(req->method.base, req->method.len, method, strlen(method));
}

const char *ffdl_http_path(h2o_req_t *req) {
  size_t len = req->query_at != SIZE_MAX ? req->query_at : req->path.len;
  return h2o_strdup(&req->pool, req->path.base, len).base;
}

static int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static char *url_decode(h2o_mem_pool_t *pool, const char *s, size_t len) {
  char *out = h2o_mem_alloc_pool(pool, len + 1), *o = out;
  for (size_t i = 0; i < len; i++) {
    if (s[i] == '%' && i + 2 < len && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      *o++ = (char)(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      *o++ = s[i] == '+' ? ' ' : s[i];
    }
  }
  *o = '\0';
  return out;
}

const char *ffdl_http_query(h2o_req_t *req, const char *name) {
  if (req->query_at == SIZE_MAX) return NULL;
  const char *q = req->path.base + req->query_at + 1;
  const char *end = req->path.base + req->path.len;
  size_t n = strlen(name);
  while (q < end) {
    const char *amp = memchr(q, '&', (size_t)(end - q));
    if (!amp) amp = end;
    const char *eq = memchr(q, '=', (size_t)(amp - q));
    const char *key_end = eq ? eq : amp;
    if ((size_t)(key_end - q) == n && memcmp(q, name, n) == 0)
      return eq ? url_decode(&req->pool, eq + 1, (size_t)(amp - eq - 1)) : "";
    q = amp + 1;
  }
  return NULL;
}

const char *ffdl_http_request_header(h2o_req_t *req, const char *name) {
  ssize_t i = h2o_find_header_by_str(&req->headers, name, strlen(name), -1);
  if (i < 0) return NULL;
  h2o_iovec_t v = req->headers.entries[i].value;
  return h2o_strdup(&req->pool, v.base, v.len).base;
}

/* ---- answers given later ------------------------------------------------- */

/* A token in the request's pool tells the handle when the request goes. */
typedef struct {
  ffdl_http_later *later; /* NULL once the handle was taken */
} later_token;

struct ffdl_http_later {
  h2o_req_t *req;     /* NULL once the request was disposed */
  later_token *token; /* NULL once the request was disposed */
};

static void later_disposed(void *mem) {
  later_token *t = mem;
  if (t->later) t->later->req = NULL, t->later->token = NULL;
}

ffdl_http_later *ffdl_http_later_new(h2o_req_t *req) {
  ffdl_http_later *later = malloc(sizeof *later);
  if (!later) return NULL;
  later_token *t = h2o_mem_alloc_shared(&req->pool, sizeof *t, later_disposed);
  t->later = later;
  later->req = req;
  later->token = t;
  return later;
}

h2o_req_t *ffdl_http_later_take(ffdl_http_later *later) {
  h2o_req_t *req = later->req;
  if (later->token) later->token->later = NULL;
  free(later);
  return req;
}

/* ---- streams ----------------------------------------------------------- */

struct ffdl_stream {
  h2o_generator_t super;
  h2o_req_t *req;
  char *pending; /* bytes waiting for the previous send to complete */
  size_t pending_len, pending_cap;
  char *in_flight;
  int sending, finishing, closed;
  void (*on_close)(void *ud, ffdl_stream *s);
  void *ud;
};

static void stream_release(ffdl_stream *s) {
  if (s->closed) return;
  s->closed = 1;
  if (s->on_close) s->on_close(s->ud, s);
  free(s->pending);
  free(s->in_flight);
  /* the struct lives in the request's pool */
}

static void stream_flush(ffdl_stream *s) {
  if (s->sending || s->closed) return;
  if (s->pending_len == 0 && !s->finishing) return;
  int final = s->finishing;
  free(s->in_flight);
  s->in_flight = NULL;
  h2o_iovec_t buf;
  if (final) {
    /* h2o may write the last buffer after we let go: keep it in the pool */
    buf = h2o_strdup(&s->req->pool, s->pending ? s->pending : "", s->pending_len);
    free(s->pending);
  } else {
    s->in_flight = s->pending; /* freed at the next flush, after proceed() */
    buf = h2o_iovec_init(s->pending ? s->pending : "", s->pending_len);
  }
  s->pending = NULL;
  s->pending_len = s->pending_cap = 0;
  s->sending = 1;
  h2o_send(s->req, &buf, 1, final ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
  if (final) stream_release(s);
}

static void stream_proceed(h2o_generator_t *g, h2o_req_t *req) {
  (void)req;
  ffdl_stream *s = (ffdl_stream *)g;
  s->sending = 0;
  stream_flush(s);
}

static void stream_stop(h2o_generator_t *g, h2o_req_t *req) {
  (void)req;
  stream_release((ffdl_stream *)g);
}

ffdl_stream *ffdl_stream_start(h2o_req_t *req, const char *content_type,
                               void (*on_close)(void *ud, ffdl_stream *s), void *ud) {
  ffdl_stream *s = h2o_mem_alloc_pool(&req->pool, sizeof *s);
  memset(s, 0, sizeof *s);
  s->super.proceed = stream_proceed;
  s->super.stop = stream_stop;
  s->req = req;
  s->on_close = on_close;
  s->ud = ud;
  req->res.status = 200;
  req->res.reason = "OK";
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, content_type,
                 strlen(content_type));
  h2o_start_response(req, &s->super);
  return s;
}

void ffdl_stream_write(ffdl_stream *s, const char *data, size_t len) {
  if (s->closed || s->finishing) return;
  if (s->pending_len + len > s->pending_cap) {
    size_t cap = (s->pending_len + len) * 2 + 256;
    char *grown = realloc(s->pending, cap);
    if (!grown) return;
    s->pending = grown;
    s->pending_cap = cap;
  }
  memcpy(s->pending + s->pending_len, data, len);
  s->pending_len += len;
  stream_flush(s);
}

void ffdl_stream_finish(ffdl_stream *s) {
  if (s->closed || s->finishing) return;
  s->finishing = 1;
  stream_flush(s);
}
