/* loom-admin: what its files share. main.c parses the global options and
 * dispatches; usage.c has prices, the usage export and log retention. */
#ifndef LOOM_ADMIN_H
#define LOOM_ADMIN_H

#include <libpq-fe.h>

#include "db.h"
#include "err.h"

/* Prints "loom-admin: <message>" and returns 1. */
int fail(const struct loom_err *err);
/* Prints "loom-admin: " fmt (one %s for arg) and a hint; returns 2. */
int usage_error(const char *fmt, const char *arg);
/* Connects to LOOM_PG_DSN / --pg-dsn. */
int open_db(struct loom_db **ret, struct loom_err *err);
/* Prints a result as an aligned table with the given headers ("-" for NULL). */
void print_table(PGresult *res, const char *const *headers);
/* Runs a query and prints its result as a table. */
int query_print(const char *sql, const char *const *headers, int n, const char *const *params);
/* Runs an UPDATE/INSERT that must touch exactly one row; notfound is the
 * message when it touches none, done what to print when it does. */
int exec_one(const char *sql, int n, const char *const *params, const char *notfound,
             const char *done);

int cmd_prices(int argc, char **argv);
int cmd_usage(int argc, char **argv);
int cmd_logs(int argc, char **argv);

#endif
