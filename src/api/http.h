/*
 * The HTTP server: h2o on the libuv loop. Requests go to one handler;
 * helpers answer with JSON, FfDL-shaped errors, files, or a stream that
 * the application feeds line by line.
 */
#ifndef FFDL_API_HTTP_H
#define FFDL_API_HTTP_H

#include <h2o.h>
#include <jansson.h>
#include <uv.h>

typedef struct ffdl_http ffdl_http;
typedef struct ffdl_stream ffdl_stream;

/* Returns 0 when it answered (now, or later through a stream). */
typedef void (*ffdl_http_handler)(void *ud, h2o_req_t *req);

/* Listens on HOST:PORT (port 0: any free one, see ffdl_http_port). */
int ffdl_http_listen(uv_loop_t *loop, const char *host, int port, size_t max_body,
                     ffdl_http_handler handler, void *ud, ffdl_http **out, char **err);
int ffdl_http_port(const ffdl_http *http);
/* Stops accepting; open connections finish. */
void ffdl_http_stop(ffdl_http *http);

/* Responses. */
void ffdl_http_json(h2o_req_t *req, int status, json_t *body); /* takes BODY */
/* {"code": status, "error": "...", "description": "..."}; ERROR names the
 * FfDL error code when there is one (C101, C102, ...). */
void ffdl_http_error(h2o_req_t *req, int status, const char *error, const char *description);
void ffdl_http_text(h2o_req_t *req, int status, const char *content_type, const char *body,
                    size_t len);
/* Sends the file at PATH (read whole into the request's pool; bounded). */
void ffdl_http_file(h2o_req_t *req, const char *path, const char *content_type,
                    const char *download_name);
void ffdl_http_header(h2o_req_t *req, const char *name, const char *value);

/*
 * Answers given later, after work elsewhere (a policy reload on the thread
 * pool): the handler returns without answering and keeps a ffdl_http_later.
 * ffdl_http_later_take gives the request back when the answer is ready, or
 * NULL when the client has gone meanwhile (then nothing may be sent).
 */
typedef struct ffdl_http_later ffdl_http_later;
/* NULL when out of memory (answer now, then). */
ffdl_http_later *ffdl_http_later_new(h2o_req_t *req);
/* Takes ownership of LATER (frees it); the request is borrowed. */
h2o_req_t *ffdl_http_later_take(ffdl_http_later *later);

/* Request helpers. */
int ffdl_http_method_is(const h2o_req_t *req, const char *method);
/* The path without the query string, NUL-terminated in the request's pool. */
const char *ffdl_http_path(h2o_req_t *req);
/* The query parameter NAME (decoded, in the pool), or NULL. */
const char *ffdl_http_query(h2o_req_t *req, const char *name);
/* The request header NAME (NUL-terminated, in the pool), or NULL. */
const char *ffdl_http_request_header(h2o_req_t *req, const char *name);

/*
 * Streams: a chunked response that the application feeds. ON_CLOSE runs
 * once when the stream ends (finished or the client left); after it the
 * stream must not be used.
 */
ffdl_stream *ffdl_stream_start(h2o_req_t *req, const char *content_type,
                               void (*on_close)(void *ud, ffdl_stream *s), void *ud);
void ffdl_stream_write(ffdl_stream *s, const char *data, size_t len);
void ffdl_stream_finish(ffdl_stream *s);

#endif
