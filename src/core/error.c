/*
 * error.c: the one table of ffdl error codes and their messages.
 * Owns: code -> message/name mapping. Must not: log or allocate.
 */
#include "core/error.h"

const char *ffdl_strerror(int err) {
  switch (err) {
  case FFDL_OK:
    return "success";
#define FFDL_ERR_MSG(name, msg)                                                                    \
  case FFDL_E##name:                                                                               \
    return msg;
    FFDL_ERRNO_MAP(FFDL_ERR_MSG)
#undef FFDL_ERR_MSG
  default:
    return "unknown error";
  }
}

const char *ffdl_err_name(int err) {
  switch (err) {
  case FFDL_OK:
    return "FFDL_OK";
#define FFDL_ERR_NAME(name, msg)                                                                   \
  case FFDL_E##name:                                                                               \
    return "FFDL_E" #name;
    FFDL_ERRNO_MAP(FFDL_ERR_NAME)
#undef FFDL_ERR_NAME
  default:
    return "FFDL_EUNKNOWN";
  }
}
