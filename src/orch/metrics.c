/*
 * metrics.c: turns learner output into evaluation-metric records.
 * Owns: compiling FfDL regex_extractor groups (PCRE2, which reads their
 * (?P<name>...) groups) and reading emetrics lines. Must not: store or
 * print records (the orchestrator and its observers do).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "orch/metrics.h"
#include "core/error.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  char *label;
  pcre2_code *re;
  pcre2_match_data *md;
  json_t *scalars; /* {name: {type, value}} from the manifest */
  json_t *etimes;
} group;

struct ffdl_metrics {
  group *groups;
  size_t n;
  int from_file;
  char *file;
  long rindex;
};

static void free_group(group *g) {
  free(g->label);
  pcre2_code_free(g->re);
  pcre2_match_data_free(g->md);
  json_decref(g->scalars);
  json_decref(g->etimes);
}

void ffdl_metrics_free(ffdl_metrics *m) {
  if (!m) return;
  for (size_t i = 0; i < m->n; i++)
    free_group(&m->groups[i]);
  free(m->groups);
  free(m->file);
  free(m);
}

static int compile_group(group *g, const char *label, const json_t *spec, char **err) {
  const char *regex = json_string_value(json_object_get(spec, "regex"));
  g->label = strdup(label);
  g->scalars = json_incref(json_object_get(spec, "scalars"));
  g->etimes = json_incref(json_object_get(spec, "etimes"));
  int code;
  PCRE2_SIZE offset;
  g->re = regex ? pcre2_compile((PCRE2_SPTR)regex, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &code, &offset,
                                NULL)
                : NULL;
  if (!g->re) {
    char msg[256] = "no regex";
    if (regex) pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof msg);
    char buf[512];
    snprintf(buf, sizeof buf,
             "evaluation_metrics.groups.%s.regex: does not compile at offset %zu: %s", label,
             (size_t)offset, msg);
    *err = strdup(buf);
    return FFDL_EINVALID;
  }
  g->md = pcre2_match_data_create_from_pattern(g->re, NULL);
  return g->md ? FFDL_OK : FFDL_ENOMEM;
}

int ffdl_metrics_new(const json_t *em, ffdl_metrics **out, char **err) {
  *out = NULL;
  *err = NULL;
  const char *type = json_string_value(json_object_get(em, "type"));
  if (!em || !type || strcmp(type, "none") == 0) return FFDL_OK;
  ffdl_metrics *m = calloc(1, sizeof *m);
  if (!m) return FFDL_ENOMEM;
  m->from_file = strcmp(type, "emetrics_file") == 0 || strcmp(type, "file") == 0;
  const char *in = json_string_value(json_object_get(em, "in"));
  if (in) m->file = strdup(in);
  json_t *groups = json_object_get(em, "groups");
  if (json_is_object(groups) && !m->from_file) {
    m->groups = calloc(json_object_size(groups), sizeof *m->groups);
    const char *label;
    json_t *spec;
    json_object_foreach(groups, label, spec) {
      int rc = compile_group(&m->groups[m->n], label, spec, err);
      m->n++;
      if (rc != FFDL_OK) {
        ffdl_metrics_free(m);
        return rc;
      }
    }
  }
  *out = m;
  return FFDL_OK;
}

int ffdl_metrics_from_file(const ffdl_metrics *m) {
  return m && m->from_file;
}

const char *ffdl_metrics_file(const ffdl_metrics *m) {
  return m ? m->file : NULL;
}

/* The capture named by VALUE ("$loss" or "loss"), as a new JSON string. */
static json_t *capture(group *g, const char *line, const char *value) {
  if (!value) return NULL;
  if (value[0] == '$') value++;
  PCRE2_UCHAR *text;
  PCRE2_SIZE len;
  if (pcre2_substring_get_byname(g->md, (PCRE2_SPTR)value, &text, &len) != 0) return NULL;
  json_t *s = json_stringn((const char *)text, len);
  pcre2_substring_free(text);
  (void)line;
  return s;
}

/* {k: {type, value: "<captured>"}} for the manifest's scalars or etimes. */
static json_t *collect(group *g, const char *line, const json_t *wanted) {
  json_t *out = json_object();
  const char *key;
  json_t *spec;
  json_object_foreach((json_t *)wanted, key, spec) {
    json_t *v = capture(g, line, json_string_value(json_object_get(spec, "value")));
    if (!v) continue;
    const char *type = json_string_value(json_object_get(spec, "type"));
    json_object_set_new(out, key,
                        json_pack("{s:s,s:o}", "type", type ? type : "STRING", "value", v));
  }
  return out;
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

json_t *ffdl_metrics_line(ffdl_metrics *m, const char *line, size_t len) {
  if (!m) return NULL;
  for (size_t i = 0; i < m->n; i++) {
    group *g = &m->groups[i];
    if (pcre2_match(g->re, (PCRE2_SPTR)line, len, 0, 0, g->md, NULL) < 0) continue;
    json_t *rec = json_pack("{s:s,s:{s:I,s:I},s:o,s:o}", "grouplabel", g->label, "meta", "time",
                            (json_int_t)now_ms(), "rindex", (json_int_t)++m->rindex, "etimes",
                            collect(g, line, g->etimes), "values", collect(g, line, g->scalars));
    return rec;
  }
  return NULL;
}

json_t *ffdl_metrics_emetrics_line(ffdl_metrics *m, const char *line, size_t len) {
  if (!m) return NULL;
  json_t *rec = json_loadb(line, len, 0, NULL);
  if (!json_is_object(rec) || !json_is_object(json_object_get(rec, "values"))) {
    json_decref(rec);
    return NULL;
  }
  if (!json_object_get(rec, "meta")) json_object_set_new(rec, "meta", json_object());
  json_t *meta = json_object_get(rec, "meta");
  if (!json_object_get(meta, "time")) json_object_set_new(meta, "time", json_integer(now_ms()));
  json_object_set_new(meta, "rindex", json_integer(++m->rindex));
  return rec;
}

static size_t append_pairs(const json_t *obj, char *out, size_t cap, size_t len) {
  const char *key;
  json_t *v;
  json_object_foreach((json_t *)obj, key, v) {
    json_t *value = json_object_get(v, "value");
    char text[64];
    if (json_is_string(value))
      snprintf(text, sizeof text, "%s", json_string_value(value));
    else if (json_is_number(value))
      snprintf(text, sizeof text, "%g", json_number_value(value));
    else
      continue;
    int n = snprintf(out + len, cap - len, "%s%s %s", len ? " " : "", key, text);
    if (n < 0 || (size_t)n >= cap - len) break;
    len += (size_t)n;
  }
  return len;
}

void ffdl_metrics_describe(const json_t *record, char *out, size_t cap) {
  if (!cap) return;
  out[0] = '\0';
  size_t len = append_pairs(json_object_get(record, "etimes"), out, cap, 0);
  append_pairs(json_object_get(record, "values"), out, cap, len);
}
