/* Running helper programs from a threaded process. */
#ifndef LOOM_PROC_H
#define LOOM_PROC_H

#include <stdint.h>

#include "err.h"

/* Runs argv (path in argv[0]) with env (NULL: inherit), feeding stdin_data
 * (may be NULL) and collecting stdout into *ret_out (may be NULL; stderr is
 * appended to the error message on failure). Returns 0 only on exit status
 * 0. The program is in a process group of its own. */
int loom_run(const char *const *argv, const char *const *env, const char *stdin_data,
             char **ret_out, struct loom_err *err);
/* The same, its whole group killed at deadline_ms (monotonic; 0: none):
 * then LOOM_ETIMEOUT. */
int loom_run_until(const char *const *argv, const char *const *env, const char *stdin_data,
                   int64_t deadline_ms, char **ret_out, struct loom_err *err);

#endif
