/* multipart/form-data bodies: the parts of an FfDL model upload. */
#ifndef FFDL_API_MULTIPART_H
#define FFDL_API_MULTIPART_H

#include <stddef.h>

typedef struct {
  char name[128];     /* the form field */
  char filename[256]; /* "" when the part is not a file */
  const char *data;   /* borrowed from the body */
  size_t len;
} ffdl_part;

/* Splits BODY by the boundary named in CONTENT_TYPE into at most MAX parts.
 * Returns the number of parts, or -1 when the body is not multipart. */
int ffdl_multipart_parse(const char *content_type, const char *body, size_t len, ffdl_part *parts,
                         int max);
/* The part called NAME, or NULL. */
const ffdl_part *ffdl_multipart_find(const ffdl_part *parts, int n, const char *name);

#endif
