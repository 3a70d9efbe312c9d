/* Process-wide logging to stderr, with a level taken from FFDL_LOG. Safe to
 * call from any thread: each line is written whole. */
#ifndef FFDL_CORE_LOG_H
#define FFDL_CORE_LOG_H

typedef enum { FFDL_LOG_DEBUG, FFDL_LOG_INFO, FFDL_LOG_WARN, FFDL_LOG_ERROR } ffdl_log_level;

/* Reads FFDL_LOG (debug|info|warn|error); the default is warn. */
void ffdl_log_init(void);
void ffdl_log_set_level(ffdl_log_level level);
int ffdl_log_enabled(ffdl_log_level level);
/* Parses a level name; returns -1 when unknown. */
int ffdl_log_parse_level(const char *name);
void ffdl_log(ffdl_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
