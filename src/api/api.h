/*
 * The REST API: FfDL's v1 endpoints (see ../shared/FFDL-REFERENCE.md),
 * authentication, tenants, log streams and /metrics.
 */
#ifndef FFDL_API_API_H
#define FFDL_API_API_H

#include "orch/orch.h"
#include "policy/reload.h"
#include "store/users.h"

#include <h2o.h>

typedef struct ffdl_api ffdl_api;

typedef struct {
  ffdl_orch *orch;
  ffdl_jobstore *store;
  ffdl_users *users;
  ffdl_policies *policies;     /* the live generation (manifest validation) and reloads */
  const char *home;            /* jobs' work directories and uploads */
  const char *results;         /* <results>/<id>/ */
  const char *openapi;         /* path of the OpenAPI document */
  uint64_t max_unzipped;       /* zip-bomb cap for model uploads */
  double creates_per_minute;   /* per user; 0: no limit */
  const json_t *default_store; /* results store for manifests that name none (borrowed), or NULL */
} ffdl_api_opts;

int ffdl_api_new(const ffdl_api_opts *opts, ffdl_api **out);
void ffdl_api_free(ffdl_api *api);
/* The request handler for ffdl_http_listen (UD is the api). */
void ffdl_api_handle(void *api, h2o_req_t *req);

/* Orchestrator events the API needs: log lines for followers, endings. */
void ffdl_api_on_line(ffdl_api *api, const char *id, int learner, const char *line, size_t len);
void ffdl_api_on_end(ffdl_api *api, const char *id, const char *status);

#endif
