/* Small string helpers shared by the layers above core. */
#ifndef FFDL_CORE_STR_H
#define FFDL_CORE_STR_H

/* A newly allocated string formatted like printf, or NULL when out of
 * memory (caller frees). */
char *ffdl_strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* TEXT as a finite number in [LO, HI], a whole one when WHOLE, with
 * nothing after it but spaces: 0 with *OUT set, or -1 (strtod alone takes
 * "12x" as 12 and "nan" as a number). */
int ffdl_parse_number(const char *text, double lo, double hi, int whole, double *out);

#endif
