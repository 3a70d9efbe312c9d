/*
 * Evaluation metrics from a learner's output, as FfDL's manifests describe
 * them: regex_extractor groups over log lines, or an emetrics file of JSON
 * lines. Each match becomes one record:
 *   {grouplabel, meta: {time, rindex}, etimes: {k: {type, value}},
 *    values: {k: {type, value}}}
 */
#ifndef FFDL_ORCH_METRICS_H
#define FFDL_ORCH_METRICS_H

#include <jansson.h>
#include <stddef.h>

typedef struct ffdl_metrics ffdl_metrics;

/* Compiles the evaluation_metrics of a spec (borrowed; NULL or type none:
 * no metrics). *err names the group whose regex does not compile. */
int ffdl_metrics_new(const json_t *evaluation_metrics, ffdl_metrics **out, char **err);
void ffdl_metrics_free(ffdl_metrics *m);

/* Feeds one log line; returns a new record (caller decrefs) or NULL. */
json_t *ffdl_metrics_line(ffdl_metrics *m, const char *line, size_t len);
/* Parses one line of an emetrics file (FfDL's JSON record); NULL if it is
 * not one. */
json_t *ffdl_metrics_emetrics_line(ffdl_metrics *m, const char *line, size_t len);
/* Whether records come from log lines (regex) or from a file (emetrics). */
int ffdl_metrics_from_file(const ffdl_metrics *m);
/* The path of the emetrics file as written in the manifest ("in"), or NULL. */
const char *ffdl_metrics_file(const ffdl_metrics *m);

/* A short progress text for a record: "epoch 3 accuracy 0.9611 loss 0.12". */
void ffdl_metrics_describe(const json_t *record, char *out, size_t cap);

#endif
