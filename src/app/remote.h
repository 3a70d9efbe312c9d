/*
 * Jobs on an ffdl-server, driven from ffdl-run (--server URL): submitted over
 * the REST API and watched by polling, with the same observer callbacks the
 * local orchestrator gives, so that the same job scripts run remotely.
 */
#ifndef FFDL_APP_REMOTE_H
#define FFDL_APP_REMOTE_H

#include "orch/orch.h"

typedef struct ffdl_remote ffdl_remote;

int ffdl_remote_new(uv_loop_t *loop, const ffdl_orch_observer *observer, void *ud,
                    ffdl_remote **out);
/* Frees; call once the loop no longer runs its timer (after ffdl_remote_active is 0). */
void ffdl_remote_free(ffdl_remote *r);
void ffdl_remote_set_observer(ffdl_remote *r, const ffdl_orch_observer *observer, void *ud);

/* Submits SPEC (a validated spec, borrowed) as an FfDL manifest with the
 * model code of MODEL; 0 and the id, or non-zero with *err (caller frees). */
int ffdl_remote_submit_spec(ffdl_remote *r, const json_t *spec, const char *model, char id[64],
                            char **err);
const char *ffdl_remote_status(ffdl_remote *r, const char *id);
void ffdl_remote_halt(ffdl_remote *r, const char *id);
void ffdl_remote_halt_all(ffdl_remote *r);
size_t ffdl_remote_active(const ffdl_remote *r);
/* {final_metrics: {group: {name: {type, value}}}, status, ...} (caller decrefs). */
json_t *ffdl_remote_job(ffdl_remote *r, const char *id);
/* Downloads the trained model and unpacks it into DIR. */
int ffdl_remote_download(ffdl_remote *r, const char *id, const char *dir, char **err);

#endif
