/* Lua job scripts: `ffdl-run script.lua` with require "ffdl". */
#ifndef FFDL_APP_SCRIPT_H
#define FFDL_APP_SCRIPT_H

#include "app/runtime.h"
#include "app/ui.h"

/*
 * Runs the job script PATH on the runtime's loop until the script and every
 * job it started are done. Returns the exit status: 0, 2 for an error in the
 * script (file, line and traceback on stderr), 130 when interrupted.
 * A script that returns a table is a declarative job spec: *SPEC_TABLE is
 * set to 1 and nothing runs (the caller treats the file as a manifest).
 */
/* REMOTE: the jobs go to the server of ffdl_client_url() instead. */
int ffdl_script_run(ffdl_runtime *rt, ffdl_ui *ui, const char *path, int remote, int *spec_table);

#endif
