/* Small string helpers shared by the layers above core. */
#ifndef FFDL_CORE_STR_H
#define FFDL_CORE_STR_H

/* A newly allocated string formatted like printf, or NULL when out of
 * memory (caller frees). */
char *ffdl_strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
