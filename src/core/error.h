/* Error codes shared by every layer: negative ints, libuv style. */
#ifndef FFDL_CORE_ERROR_H
#define FFDL_CORE_ERROR_H

/* X(name, message) */
#define FFDL_ERRNO_MAP(X)                                                                          \
  X(NOMEM, "out of memory")                                                                        \
  X(IO, "input/output error")                                                                      \
  X(NOENT, "no such file or directory")                                                            \
  X(TOOBIG, "input is larger than the size limit")                                                 \
  X(SYNTAX, "syntax error")                                                                        \
  X(INVALID, "invalid input")                                                                      \
  X(LIMIT, "resource limit exceeded")                                                              \
  X(TIMEOUT, "deadline exceeded")                                                                  \
  X(LUA, "error in Lua code")                                                                      \
  X(NOGPU, "no GPU available")                                                                     \
  X(USAGE, "bad command-line usage")

enum {
  FFDL_OK = 0,
#define FFDL_ERR_ENUM(name, msg) FFDL_E##name,
  FFDL__ERR_BASE = -1000,
  FFDL_ERRNO_MAP(FFDL_ERR_ENUM)
#undef FFDL_ERR_ENUM
      FFDL__ERR_END
};

/* Returns a static message for an FFDL_E* code (never NULL). */
const char *ffdl_strerror(int err);
/* Returns the symbolic name, e.g. "FFDL_ENOMEM" (never NULL). */
const char *ffdl_err_name(int err);

#endif
