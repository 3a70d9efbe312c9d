/*
 * h2o_static.c: the baseline for bench/server.py: the smallest h2o server on
 * libuv that answers every request with "OK", as ffdl-server's /health does.
 *   bench_h2o_static PORT
 */
#include <h2o.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

static h2o_globalconf_t config;
static h2o_context_t ctx;
static h2o_accept_ctx_t accept_ctx;

static int on_req(h2o_handler_t *self, h2o_req_t *req) {
  (void)self;
  static h2o_generator_t generator = {NULL, NULL};
  req->res.status = 200;
  req->res.reason = "OK";
  h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, H2O_STRLIT("text/plain"));
  h2o_iovec_t body = h2o_iovec_init(H2O_STRLIT("OK"));
  h2o_start_response(req, &generator);
  h2o_send(req, &body, 1, H2O_SEND_STATE_FINAL);
  return 0;
}

static void on_accept(uv_stream_t *listener, int status) {
  if (status != 0) return;
  uv_tcp_t *conn = malloc(sizeof *conn);
  uv_tcp_init(listener->loop, conn);
  if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
    uv_close((uv_handle_t *)conn, (uv_close_cb)free);
    return;
  }
  h2o_accept(&accept_ctx, h2o_uv_socket_create((uv_stream_t *)conn, (uv_close_cb)free));
}

int main(int argc, char **argv) {
  if (argc < 2) return fprintf(stderr, "usage: bench_h2o_static PORT\n"), 2;
  h2o_config_init(&config);
  h2o_hostconf_t *host = h2o_config_register_host(&config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
  h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
  h2o_create_handler(path, sizeof(h2o_handler_t))->on_req = on_req;
  uv_loop_t *loop = uv_default_loop();
  h2o_context_init(&ctx, loop, &config);
  accept_ctx.ctx = &ctx;
  accept_ctx.hosts = config.hosts;
  uv_tcp_t listener;
  struct sockaddr_in addr;
  uv_tcp_init(loop, &listener);
  uv_ip4_addr("127.0.0.1", atoi(argv[1]), &addr);
  if (uv_tcp_bind(&listener, (struct sockaddr *)&addr, 0) || uv_listen((uv_stream_t *)&listener, 512, on_accept))
    return fprintf(stderr, "cannot listen on port %s\n", argv[1]), 1;
  printf("listening\n");
  fflush(stdout);
  return uv_run(loop, UV_RUN_DEFAULT);
}
