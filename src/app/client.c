/*
 * client.c: train, list, show, logs, halt, delete, download and user, over
 * HTTP with libcurl. Configured like FfDL's client: FFDL_URL + FFDL_TOKEN,
 * or DLAAS_URL + DLAAS_USERNAME + DLAAS_PASSWORD (basic auth).
 * Owns: requests, output formats, exit statuses. Must not: read the store.
 */
#include "app/client.h"
#include "core/file.h"
#include "core/progress.h"
#include "orch/orch.h"
#include "store/localstore.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  char *data;
  size_t len;
  int stream;              /* write straight to stdout */
  size_t streamed;         /* bytes written to stdout */
  int no_learner_log;      /* the answer had X-FfDL-Learner-Log: none */
  ffdl_progress *progress; /* shows the upload or the download when set */
  int uploading;
} body;

static int on_xfer(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                   curl_off_t ulnow) {
  body *b = ud;
  if (b->uploading)
    ffdl_progress_update(b->progress, (uint64_t)ulnow, (uint64_t)ultotal);
  else
    ffdl_progress_update(b->progress, (uint64_t)dlnow, (uint64_t)dltotal);
  return 0;
}

static size_t collect(char *ptr, size_t size, size_t n, void *ud) {
  body *b = ud;
  size_t len = size * n;
  if (b->stream) {
    fwrite(ptr, 1, len, stdout);
    fflush(stdout);
    b->streamed += len;
    return len;
  }
  char *grown = realloc(b->data, b->len + len + 1);
  if (!grown) return 0;
  memcpy(grown + b->len, ptr, len);
  b->data = grown;
  b->len += len;
  b->data[b->len] = '\0';
  return len;
}

static size_t on_header(char *ptr, size_t size, size_t n, void *ud) {
  body *b = ud;
  size_t len = size * n;
  static const char name[] = "x-ffdl-learner-log:";
  if (len > sizeof name && !strncasecmp(ptr, name, sizeof name - 1)) {
    const char *v = ptr + sizeof name - 1;
    while (*v == ' ')
      v++;
    b->no_learner_log = !strncmp(v, "none", 4);
  }
  return len;
}

const char *ffdl_client_url(void) {
  const char *url = getenv("FFDL_URL");
  if (url && *url) return url;
  url = getenv("DLAAS_URL");
  return url && *url ? url : NULL;
}

/* One request; returns the HTTP status (0: no answer) and fills B. */
static long request(const char *method, const char *path, const char *json_body, curl_mime *form,
                    body *b, const char *save_to) {
  CURL *c = curl_easy_init();
  char url[4096];
  const char *base = ffdl_client_url();
  snprintf(url, sizeof url, "%s%s", base, path);
  struct curl_slist *headers = NULL;
  const char *token = getenv("FFDL_TOKEN");
  const char *user = getenv("DLAAS_USERNAME"), *password = getenv("DLAAS_PASSWORD");
  char auth[600];
  if (token && *token) {
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    headers = curl_slist_append(headers, auth);
  } else if (user && password) {
    curl_easy_setopt(c, CURLOPT_USERNAME, user);
    curl_easy_setopt(c, CURLOPT_PASSWORD, password);
    char info[300];
    snprintf(info, sizeof info, "X-Watson-Userinfo: bluemix-instance-id=%s", user);
    headers = curl_slist_append(headers, info);
  }
  if (json_body) {
    headers = curl_slist_append(headers, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, json_body);
  }
  if (form) curl_easy_setopt(c, CURLOPT_MIMEPOST, form);
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  FILE *out = save_to ? fopen(save_to, "wb") : NULL;
  if (out) {
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
  } else {
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
  }
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, b);
  if (b->progress) {
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_xfer);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, b);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  }
  long status = 0;
  CURLcode rc = curl_easy_perform(c);
  if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  if (b->progress) {
    curl_off_t up = 0, down = 0;
    curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &up);
    curl_easy_getinfo(c, CURLINFO_SIZE_DOWNLOAD_T, &down);
    uint64_t moved = (uint64_t)(b->uploading ? up : down);
    if (status && status < 400)
      ffdl_progress_finish(b->progress, moved, moved);
    else /* no answer, or an error answer, is no model: never "(done)" */
      ffdl_progress_fail(b->progress, moved, moved);
  }
  if (rc != CURLE_OK) fprintf(stderr, "ffdl: %s: %s\n", url, curl_easy_strerror(rc));
  if (out) fclose(out);
  curl_slist_free_all(headers);
  curl_easy_cleanup(c);
  return status;
}

/* Prints an FfDL error body; returns the exit status for it. */
static int report(long status, const body *b) {
  if (status == 0) return 1;
  json_t *err = b->data ? json_loads(b->data, 0, NULL) : NULL;
  const char *code = json_string_value(json_object_get(err, "error"));
  const char *desc = json_string_value(json_object_get(err, "description"));
  fprintf(stderr, "ffdl: HTTP %ld %s\n%s\n", status, code ? code : "",
          desc ? desc : (b->data ? b->data : ""));
  json_decref(err);
  return status == 400 ? 2 : 1;
}

static json_t *get_json(const char *path, int *exit_status) {
  body b = {0};
  long status = request("GET", path, NULL, NULL, &b, NULL);
  json_t *doc = status == 200 && b.data ? json_loads(b.data, 0, NULL) : NULL;
  *exit_status = doc ? 0 : report(status, &b);
  free(b.data);
  return doc;
}

/* Zips DIR (a trailing / is fine) unless it is a .zip already. Writes the
 * file to upload into UPLOAD; *tmp_fd >= 0 when a temporary zip was made. */
static int model_zip(const char *model, char *upload, size_t cap, int *tmp_fd, char **err) {
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", model);
  size_t n = strlen(dir);
  while (n > 1 && dir[n - 1] == '/')
    dir[--n] = '\0'; /* "model/" works as "model" */
  *tmp_fd = -1;
  if (n >= 4 && strcmp(dir + n - 4, ".zip") == 0) {
    snprintf(upload, cap, "%s", dir);
    return 0;
  }
  snprintf(upload, cap, "/tmp/ffdl-model-XXXXXX");
  *tmp_fd = mkstemp(upload);
  char *zerr = NULL;
  if (*tmp_fd < 0 || ffdl_localstore_zip_dir(dir, upload, NULL, &zerr) != 0) {
    char msg[4300];
    snprintf(msg, sizeof msg, "cannot zip %s: %s", dir, zerr ? zerr : "no such directory");
    *err = strdup(msg);
    free(zerr);
    if (*tmp_fd >= 0) close(*tmp_fd), unlink(upload);
    *tmp_fd = -1;
    return 2;
  }
  return 0;
}

int ffdl_client_submit(const char *manifest_name, const char *manifest_text, size_t len,
                       const char *model, char id[64], json_t **warnings, char **err) {
  *err = NULL;
  if (warnings) *warnings = json_array();
  char upload[4096];
  int fd;
  if (model_zip(model, upload, sizeof upload, &fd, err) != 0) return 2;
  CURL *c = curl_easy_init();
  curl_mime *form = curl_mime_init(c);
  curl_mimepart *part = curl_mime_addpart(form);
  curl_mime_name(part, "manifest");
  curl_mime_data(part, manifest_text, len);
  curl_mime_filename(part, manifest_name);
  part = curl_mime_addpart(form);
  curl_mime_name(part, "model_definition");
  curl_mime_filedata(part, upload);
  curl_mime_type(part, "application/zip");
  ffdl_progress bar;
  ffdl_progress_init(&bar, "uploading the model");
  body b = {.progress = &bar, .uploading = 1};
  long status = request("POST", "/v1/models", NULL, form, &b, NULL);
  curl_mime_free(form);
  curl_easy_cleanup(c);
  if (fd >= 0) close(fd), unlink(upload);
  json_t *reply = status == 201 && b.data ? json_loads(b.data, 0, NULL) : NULL;
  int rc = 0;
  if (reply) {
    snprintf(id, 64, "%s", json_string_value(json_object_get(reply, "model_id")));
    json_t *got = json_object_get(reply, "warnings");
    if (warnings && json_is_array(got)) json_array_extend(*warnings, got);
  } else {
    json_t *e = b.data ? json_loads(b.data, 0, NULL) : NULL;
    const char *desc = json_string_value(json_object_get(e, "description"));
    char msg[8192];
    snprintf(msg, sizeof msg, "HTTP %ld %s: %s", status,
             json_string_value(json_object_get(e, "error"))
                 ? json_string_value(json_object_get(e, "error"))
                 : "",
             desc ? desc : (b.data ? b.data : "no answer"));
    *err = strdup(msg);
    json_decref(e);
    rc = status == 400 ? 2 : 1;
  }
  json_decref(reply);
  free(b.data);
  return rc;
}

json_t *ffdl_client_get(const char *path) {
  body b = {0};
  long status = request("GET", path, NULL, NULL, &b, NULL);
  json_t *doc = status == 200 && b.data ? json_loads(b.data, 0, NULL) : NULL;
  free(b.data);
  return doc;
}

int ffdl_client_halt(const char *id) {
  char path[256];
  snprintf(path, sizeof path, "/v1/models/%s", id);
  body b = {0};
  long status = request("PATCH", path, "{\"status\":\"halt\"}", NULL, &b, NULL);
  free(b.data);
  return status == 202 ? 0 : -1;
}

int ffdl_client_download(const char *id, const char *what, const char *file) {
  char path[256];
  snprintf(path, sizeof path, "/v1/models/%s/%s", id, what);
  ffdl_progress bar;
  ffdl_progress_init(&bar, "downloading");
  body b = {.progress = &bar};
  long status = request("GET", path, NULL, NULL, &b, file);
  free(b.data);
  return status == 200 ? 0 : -1;
}

/* The server's validation warnings on stderr, as ffdl validate and ffdl-run
 * print them: the server knows the manifest by its file NAME only, so a
 * line that starts with it is shown with the PATH given on the command line. */
static void print_warnings(json_t *warnings, const char *name, const char *path) {
  size_t i, n = strlen(name);
  json_t *w;
  json_array_foreach(warnings, i, w) {
    const char *line = json_string_value(w);
    if (!line) continue;
    if (!strncmp(line, name, n) && line[n] == ':')
      fprintf(stderr, "%s%s\n", path, line + n);
    else
      fprintf(stderr, "%s\n", line);
  }
}

static int cmd_train(int argc, char **argv) {
  if (argc < 3) {
    fputs("usage: ffdl train MANIFEST MODEL_DIR_OR_ZIP\n", stderr);
    return 2;
  }
  char *text = NULL;
  size_t len = 0;
  if (ffdl_file_read(argv[1], 1u << 20, &text, &len) != 0)
    return fprintf(stderr, "ffdl: %s: cannot read the manifest\n", argv[1]), 2;
  const char *slash = strrchr(argv[1], '/');
  const char *name = slash ? slash + 1 : argv[1];
  char id[64], *err = NULL;
  json_t *warnings = NULL;
  int rc = ffdl_client_submit(name, text ? text : "", len, argv[2], id, &warnings, &err);
  free(text);
  print_warnings(warnings, name, argv[1]);
  json_decref(warnings);
  if (rc == 0)
    printf("Model ID: %s\n", id);
  else
    fprintf(stderr, "ffdl: %s\n", err ? err : "the server refused the training");
  free(err);
  return rc;
}

static void format_ms(const char *ms, char *out, size_t cap) {
  if (!ms || !*ms) {
    snprintf(out, cap, "-");
    return;
  }
  time_t secs = (time_t)(strtoll(ms, NULL, 10) / 1000);
  struct tm tm;
  localtime_r(&secs, &tm);
  strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
}

static int cmd_list(void) {
  int rc;
  json_t *doc = get_json("/v1/models", &rc);
  if (!doc) return rc;
  printf("%-22s %-24s %-12s %-11s %-19s %-19s\n", "ID", "Name", "Framework", "Status", "Submitted",
         "Completed");
  size_t i;
  json_t *m;
  json_array_foreach(json_object_get(doc, "models"), i, m) {
    json_t *st = json_object_get(json_object_get(m, "training"), "training_status");
    char submitted[32], completed[32];
    format_ms(json_string_value(json_object_get(st, "submitted")), submitted, sizeof submitted);
    format_ms(json_string_value(json_object_get(st, "completed")), completed, sizeof completed);
    const char *name = json_string_value(json_object_get(m, "name"));
    const char *fw = json_string_value(json_object_get(json_object_get(m, "framework"), "name"));
    const char *status = json_string_value(json_object_get(st, "status"));
    printf("%-22s %-24s %-12s %-11s %-19s %-19s\n",
           json_string_value(json_object_get(m, "model_id")), name ? name : "-", fw ? fw : "-",
           status ? status : "-", submitted, completed);
  }
  json_decref(doc);
  return 0;
}

/* "FAILED (C103)" from a training_status, as the local `ffdl show` says it;
 * FfDL's "000" (ok) and an empty code add nothing. */
static void status_text(json_t *st, char *out, size_t cap) {
  const char *status = json_string_value(json_object_get(st, "status"));
  const char *code = json_string_value(json_object_get(st, "error_code"));
  if (code && *code && strcmp(code, "000") != 0)
    snprintf(out, cap, "%s (%s)", status ? status : "-", code);
  else
    snprintf(out, cap, "%s", status ? status : "-");
}

static int cmd_show(int argc, char **argv) {
  const char *id = NULL;
  int as_json = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--json"))
      as_json = 1;
    else
      id = argv[i];
  }
  if (!id) return fputs("usage: ffdl show [--json] ID\n", stderr), 2;
  char path[256];
  snprintf(path, sizeof path, "/v1/models/%s", id);
  int rc;
  json_t *doc = get_json(path, &rc);
  if (!doc) return rc;
  if (as_json) {
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);
    printf("%s\n", text);
    free(text);
  } else {
    json_t *st = json_object_get(json_object_get(doc, "training"), "training_status");
    char status[96];
    status_text(st, status, sizeof status);
    printf("ID:        %s\nName:      %s\nFramework: %s %s\nStatus:    %s\nMessage:   %s\n",
           json_string_value(json_object_get(doc, "model_id")),
           json_string_value(json_object_get(doc, "name")),
           json_string_value(json_object_get(json_object_get(doc, "framework"), "name")),
           json_string_value(json_object_get(json_object_get(doc, "framework"), "version")), status,
           json_string_value(json_object_get(st, "status_message"))
               ? json_string_value(json_object_get(st, "status_message"))
               : "");
  }
  json_decref(doc);
  return 0;
}

/* Says on stderr why `ffdl logs ID` printed nothing: the job's status,
 * code and message, and whether its learners ever started (the server's
 * X-FfDL-Learner-Log: none; after --follow it is asked again, since the
 * learners may have started while it followed). Exit status stays 0. */
static void no_log_note(const char *id, int followed, int none) {
  char path[256];
  if (followed) {
    snprintf(path, sizeof path, "/v1/models/%s/logs", id);
    body again = {0};
    int lines = 0;
    if (request("GET", path, NULL, NULL, &again, NULL) == 200) {
      lines = again.len > 0; /* they came after all: nothing to explain */
      none = again.no_learner_log;
    }
    free(again.data);
    if (lines) return;
  }
  snprintf(path, sizeof path, "/v1/models/%s", id);
  json_t *doc = ffdl_client_get(path);
  json_t *st = json_object_get(json_object_get(doc, "training"), "training_status");
  const char *status = json_string_value(json_object_get(st, "status"));
  if (!status) {
    fprintf(stderr, "ffdl: %s has no learner log lines\n", id);
    json_decref(doc);
    return;
  }
  const char *msg = json_string_value(json_object_get(st, "status_message"));
  int msg_len = msg ? (int)strcspn(msg, "\n") : 0; /* one line: C201 adds the log's tail */
  char shown[96];
  status_text(st, shown, sizeof shown);
  int ended = ffdl_orch_status_final(status);
  if (ended && none)
    fprintf(stderr, "ffdl: %s has no learner log: it ended %s before its learners started", id,
            shown);
  else if (ended)
    fprintf(stderr, "ffdl: %s has no learner log lines: its learners wrote none; it ended %s", id,
            shown);
  else if (none)
    fprintf(stderr, "ffdl: %s has no learner log yet: it is %s; its learners have not started", id,
            shown);
  else
    fprintf(stderr, "ffdl: %s has no learner log lines yet: it is %s", id, shown);
  if (msg_len)
    fprintf(stderr, ": %.*s\n", msg_len, msg);
  else if (!strcmp(status, "QUEUED"))
    fprintf(stderr, " (ffdl explain %s says why)\n", id); /* the reason is a decision's */
  else
    fputc('\n', stderr);
  json_decref(doc);
}

static int cmd_logs(int argc, char **argv) {
  const char *id = NULL;
  int follow = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--follow") || !strcmp(argv[i], "-f"))
      follow = 1;
    else
      id = argv[i];
  }
  if (!id) return fputs("usage: ffdl logs [--follow] ID\n", stderr), 2;
  char path[256];
  snprintf(path, sizeof path, "/v1/models/%s/logs%s", id, follow ? "?follow=true" : "");
  body b = {.stream = 1};
  long status = request("GET", path, NULL, NULL, &b, NULL);
  if (status != 200) {
    body e = {0};
    request("GET", path, NULL, NULL, &e, NULL);
    int rc = report(status, &e);
    free(e.data);
    return rc;
  }
  if (b.streamed == 0) no_log_note(id, follow, b.no_learner_log);
  return 0;
}

static int simple(const char *method, const char *fmt, const char *id, const char *json_body,
                  const char *done) {
  char path[256];
  snprintf(path, sizeof path, fmt, id);
  body b = {0};
  long status = request(method, path, json_body, NULL, &b, NULL);
  int rc = status >= 200 && status < 300 ? 0 : report(status, &b);
  if (!rc) printf("%s %s\n", done, id);
  free(b.data);
  return rc;
}

static int cmd_download(int argc, char **argv) {
  const char *id = NULL, *filename = NULL, *what = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--trainedmodel"))
      what = "trained_model";
    else if (!strcmp(argv[i], "--definition"))
      what = "definition";
    else if (!strcmp(argv[i], "--filename") && i + 1 < argc)
      filename = argv[++i];
    else
      id = argv[i];
  }
  if (!id || !what)
    return fputs("usage: ffdl download ID --trainedmodel|--definition [--filename F]\n", stderr), 2;
  char path[256], name[300];
  snprintf(path, sizeof path, "/v1/models/%s/%s", id, what);
  snprintf(name, sizeof name, "%s-%s.zip", id,
           strcmp(what, "definition") ? "trainedmodel" : "definition");
  if (!filename) filename = name;
  ffdl_progress bar;
  ffdl_progress_init(&bar, "downloading");
  body b = {.progress = &bar};
  long status = request("GET", path, NULL, NULL, &b, filename);
  if (status != 200) {
    unlink(filename);
    body e = {0};
    request("GET", path, NULL, NULL, &e, NULL);
    int rc = report(status, &e);
    free(e.data);
    return rc;
  }
  printf("Downloaded %s\n", filename);
  return 0;
}

static int cmd_user(int argc, char **argv) {
  if (argc >= 3 && !strcmp(argv[1], "add")) {
    int admin = argc > 3 && !strcmp(argv[3], "--admin");
    json_t *req = json_pack("{s:s,s:b}", "name", argv[2], "admin", admin);
    char *text = json_dumps(req, 0);
    json_decref(req);
    body b = {0};
    long status = request("POST", "/v1/users", text, NULL, &b, NULL);
    free(text);
    json_t *reply = status == 201 ? json_loads(b.data, 0, NULL) : NULL;
    int rc = reply ? 0 : report(status, &b);
    if (reply) printf("%s\n", json_string_value(json_object_get(reply, "token")));
    json_decref(reply);
    free(b.data);
    return rc;
  }
  if (argc >= 2 && !strcmp(argv[1], "list")) {
    int rc;
    json_t *doc = get_json("/v1/users", &rc);
    if (!doc) return rc;
    size_t i;
    json_t *u;
    json_array_foreach(json_object_get(doc, "users"), i, u)
        printf("%s%s\n", json_string_value(json_object_get(u, "name")),
               json_is_true(json_object_get(u, "admin")) ? " (admin)" : "");
    json_decref(doc);
    return 0;
  }
  if (argc >= 3 && !strcmp(argv[1], "remove"))
    return simple("DELETE", "/v1/users/%s", argv[2], NULL, "Removed");
  fputs("usage: ffdl user add NAME [--admin] | list | remove NAME\n", stderr);
  return 2;
}

int ffdl_client_main(int argc, char **argv) {
  const char *cmd = argv[0];
  static const char *const verbs[] = {"train",  "list",     "show", "logs", "halt",
                                      "delete", "download", "user", NULL};
  int known = 0;
  for (const char *const *v = verbs; *v; v++)
    known |= !strcmp(cmd, *v);
  if (!known) return -1;
  if (!ffdl_client_url()) {
    fprintf(stderr, "ffdl %s: set FFDL_URL (and FFDL_TOKEN), or DLAAS_URL, to reach a server\n",
            cmd);
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  int rc;
  if (!strcmp(cmd, "train"))
    rc = cmd_train(argc, argv);
  else if (!strcmp(cmd, "list"))
    rc = cmd_list();
  else if (!strcmp(cmd, "show"))
    rc = cmd_show(argc, argv);
  else if (!strcmp(cmd, "logs"))
    rc = cmd_logs(argc, argv);
  else if (!strcmp(cmd, "halt") && argc > 1)
    rc = simple("PATCH", "/v1/models/%s", argv[1], "{\"status\":\"halt\"}", "Halted");
  else if (!strcmp(cmd, "delete") && argc > 1)
    rc = simple("DELETE", "/v1/models/%s", argv[1], NULL, "Deleted");
  else if (!strcmp(cmd, "download"))
    rc = cmd_download(argc, argv);
  else if (!strcmp(cmd, "user"))
    rc = cmd_user(argc, argv);
  else
    rc = (fprintf(stderr, "usage: ffdl %s ID\n", cmd), 2);
  curl_global_cleanup();
  return rc;
}

int ffdl_client_policy(const char *verb) {
  if (!ffdl_client_url()) {
    fprintf(stderr, "ffdl policy %s: set FFDL_URL (and FFDL_TOKEN) to reach a server\n", verb);
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  body b = {0};
  long status = !strcmp(verb, "reload")
                    ? request("POST", "/v1/policies/reload", "{}", NULL, &b, NULL)
                    : request("GET", "/v1/policies", NULL, NULL, &b, NULL);
  json_t *doc = status == 200 && b.data ? json_loads(b.data, 0, NULL) : NULL;
  int rc = 0;
  if (doc) {
    printf("generation %s\n", json_string_value(json_object_get(doc, "hash")));
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(doc, "files"), i, f)
        printf("  %s  %.12s\n", json_string_value(json_object_get(f, "name")),
               json_string_value(json_object_get(f, "sha256")));
    const char *last = json_string_value(json_object_get(doc, "last_error"));
    if (last) printf("last rejected reload:\n%s\n", last);
  } else {
    rc = report(status, &b);
    if (rc == 0) rc = 1;
  }
  json_decref(doc);
  free(b.data);
  curl_global_cleanup();
  return rc;
}

static const char *dash(json_t *v) {
  return json_is_string(v) ? json_string_value(v) : "-";
}

static void clock_text(json_t *ms, char *out, size_t cap) {
  if (!json_is_integer(ms)) {
    snprintf(out, cap, "--:--:--");
    return;
  }
  time_t secs = (time_t)(json_integer_value(ms) / 1000);
  struct tm tm;
  localtime_r(&secs, &tm);
  strftime(out, cap, "%H:%M:%S", &tm);
}

/* Prints an explanation document: {model_id, status, since, decisions}. */
void ffdl_print_explanation(json_t *doc) {
  char since[16];
  clock_text(json_object_get(doc, "since"), since, sizeof since);
  printf("%s: %s since %s\n", dash(json_object_get(doc, "model_id")),
         dash(json_object_get(doc, "status")), since);
  size_t i, k;
  json_t *d, *msg;
  json_array_foreach(json_object_get(doc, "decisions"), i, d) {
    char when[16];
    clock_text(json_object_get(d, "time_ms"), when, sizeof when);
    const char *reason = json_string_value(json_object_get(d, "reason"));
    printf("  %s  %s(): %s%s%.*s  [generation %.12s]\n", when, dash(json_object_get(d, "hook")),
           dash(json_object_get(d, "outcome")), reason ? ": " : "",
           reason ? (int)strcspn(reason, "\n") : 0, reason ? reason : "",
           dash(json_object_get(d, "generation")));
    json_array_foreach(json_object_get(d, "explanations"), k, msg)
        printf("            policy: %s\n", json_string_value(msg));
  }
}

int ffdl_client_explain(const char *id) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  char path[256];
  snprintf(path, sizeof path, "/v1/models/%s/explain", id);
  int rc;
  json_t *doc = get_json(path, &rc);
  if (doc) ffdl_print_explanation(doc);
  json_decref(doc);
  curl_global_cleanup();
  return rc;
}
