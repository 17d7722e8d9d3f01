/* loom-admin: the operator's CLI. It talks to PostgreSQL directly (and to
 * NATS and the services' /readyz for `status`). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "admin.h"
#include "apikey.h"
#include "bus.h"
#include "cleanup.h"
#include "db.h"
#include "err.h"
#include "httpc.h"
#include "instance_state.h"
#include "nodes_sql.h"
#include "quantity.h"
#include "subjects.h"
#include "util.h"

/* The advisory lock that serializes concurrent migrations ("loom-mig"). */
#define MIGRATE_LOCK_KEY "7813572034718294"

static const char *pg_dsn;
static const char *nats_url;

static void usage(FILE *out)
{
    fputs(
        "usage: loom-admin [--pg-dsn DSN] [--nats-url URL] COMMAND ...\n"
        "\n"
        "commands:\n"
        "  migrate [--dir DIR]               apply migrations/NNNN_*.sql in order\n"
        "  projects create NAME | list\n"
        "  keys create --admin | --project P --role read|write [--description D]\n"
        "  keys list | revoke KEY_ID\n"
        "  nodes list | cordon NAME | uncordon NAME | drain NAME\n"
        "  quota get --project P\n"
        "  quota set --project P [--cpu VCPU] [--memory 512G] [--gpus N] [--instances N]\n"
        "                                    (\"none\" removes a limit; others are kept)\n"
        "  runtimes list\n"
        "  runtimes register NAME --image REF --language L [--default] [--deprecated]\n"
        "                                    (a function runtime; again to change it)\n"
        "  stack list\n"
        "  stack build NAME --registry HOST:PORT [--description D]\n"
        "                                    (a build stack of tools/stacks/stacks.json, made\n"
        "                                    offline with mmdebstrap, cached, pushed, registered)\n"
        "  stack register NAME --image HOST:PORT/REPO@DIGEST [--description D]\n"
        "  prices set (--file SHEET.json | --currency C --price METRIC[/SKU]=PRICE...\n"
        "             [--free METRIC[/SKU]=QUANTITY...]) [--effective-from TIME]\n"
        "             [--description D]      a new price sheet (versioned; never changed)\n"
        "  prices get [--at TIME] | list      the sheet in effect (now, or at TIME); all of them\n"
        "  usage export --format focus --from TIME --to TIME [--project P] [--include-open]\n"
        "                                    FinOps FOCUS 1.2 CSV of the hourly records, on "
        "stdout\n"
        "  logs retention get [--project P]\n"
        "  logs retention set [--project P] [--max-age 7d] [--max-size 10G|none]\n"
        "                                    (no --project: the default of every project)\n"
        "  status                            PostgreSQL, NATS and every LOOM_<SVC>_ADDR /readyz\n"
        "\n"
        "environment: LOOM_PG_DSN, LOOM_NATS_URL, LOOM_<SERVICE>_ADDR\n"
        "exit status: 0 ok, 1 failure, 2 usage error\n",
        out);
}

int fail(const struct loom_err *err)
{
    fprintf(stderr, "loom-admin: %s\n", err->msg);
    return 1;
}

int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "loom-admin: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see loom-admin --help)\n");
    return 2;
}

int open_db(struct loom_db **ret, struct loom_err *err)
{
    if (!pg_dsn || !*pg_dsn)
        return loom_err_set(err, LOOM_EINVAL, "no database: set --pg-dsn or LOOM_PG_DSN");
    return loom_db_open(pg_dsn, ret, err);
}

/* ---- migrate ----------------------------------------------------------- */

struct migration {
    char *name;
    char sha[65];
    char *sql;
};

static int exec_raw(PGconn *c, const char *sql, struct loom_err *err)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        const char *pos = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);
        loom_err_set(err, LOOM_EINTERNAL, "%s%s%s", primary ? primary : PQerrorMessage(c),
                     pos ? " at character " : "", pos ? pos : "");
        PQclear(res);
        return -1;
    }
    PQclear(res);
    return 0;
}

static int load_migrations(const char *dir, struct migration **ret, size_t *ret_n,
                           struct loom_err *err)
{
    regex_t re;
    regcomp(&re, "^[0-9]{4}_[A-Za-z0-9_.-]*\\.sql$", REG_EXTENDED | REG_NOSUB);
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, alphasort);
    if (n < 0) {
        regfree(&re);
        return loom_err_sys(err, errno, "could not read migrations directory \"%s\"", dir);
    }
    struct migration *m = calloc((size_t)n + 1, sizeof(*m));
    size_t k = 0;
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0 && regexec(&re, ents[i]->d_name, 0, NULL, 0) == 0) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", dir, ents[i]->d_name);
            size_t len;
            if (loom_read_file(path, &m[k].sql, &len, err) < 0) {
                rc = -1;
            } else {
                loom_sha256_hex(m[k].sql, len, m[k].sha);
                m[k].name = strdup(ents[i]->d_name);
                k++;
            }
        }
        free(ents[i]);
    }
    free(ents);
    regfree(&re);
    if (rc < 0) {
        for (size_t i = 0; i < k; i++) {
            free(m[i].name);
            free(m[i].sql);
        }
        free(m);
        return -1;
    }
    *ret = m;
    *ret_n = k;
    return 0;
}

/* Checks applied migrations against the files, then applies the new ones,
 * each in its own transaction. Caller holds the advisory lock. */
static int migrate_locked(struct loom_db *db, const char *dir, struct migration *m, size_t n,
                          struct loom_err *err)
{
    PGconn *c = loom_db_conn(db);
    _cleanup_pgres_ PGresult *applied = PQexec(c, "SELECT filename, sha256 FROM loom_migrations "
                                                  "ORDER BY filename");
    if (PQresultStatus(applied) != PGRES_TUPLES_OK)
        return loom_err_set(err, LOOM_EINTERNAL, "could not read loom_migrations: %s",
                            PQresultErrorMessage(applied));
    int na = PQntuples(applied);
    for (int r = 0; r < na; r++) {
        const char *f = PQgetvalue(applied, r, 0), *sha = PQgetvalue(applied, r, 1);
        size_t i = 0;
        while (i < n && strcmp(m[i].name, f) != 0)
            i++;
        if (i == n)
            return loom_err_set(err, LOOM_ECONFLICT,
                                "applied migration \"%s\" is missing from \"%s\"", f, dir);
        if (strcmp(m[i].sha, sha) != 0)
            return loom_err_set(err, LOOM_ECONFLICT,
                                "applied migration \"%s\" was changed since (sha256 was %s, is "
                                "%s): add a new migration instead",
                                f, sha, m[i].sha);
    }
    int napplied = 0;
    for (size_t i = 0; i < n; i++) {
        bool done = false;
        for (int r = 0; r < na && !done; r++)
            done = strcmp(PQgetvalue(applied, r, 0), m[i].name) == 0;
        if (done)
            continue;
        if (exec_raw(c, "BEGIN", err) < 0)
            return -1;
        if (exec_raw(c, m[i].sql, err) < 0) {
            exec_raw(c, "ROLLBACK", NULL);
            return loom_err_wrap(err, "migration \"%s\" failed (nothing of it was applied)",
                                 m[i].name);
        }
        const char *params[] = {m[i].name, m[i].sha};
        PGresult *res =
            PQexecParams(c, "INSERT INTO loom_migrations (filename, sha256) VALUES ($1, $2)", 2,
                         NULL, params, NULL, NULL, 0);
        bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        if (!ok || exec_raw(c, "COMMIT", err) < 0) {
            exec_raw(c, "ROLLBACK", NULL);
            return loom_err_set(err, LOOM_EINTERNAL, "could not record migration \"%s\"",
                                m[i].name);
        }
        printf("applied %s\n", m[i].name);
        napplied++;
    }
    if (napplied == 0)
        printf("up to date (%zu migrations)\n", n);
    return 0;
}

static int cmd_migrate(int argc, char **argv)
{
    const char *dir = "migrations";
    static const struct option lo[] = {{"dir", required_argument, NULL, 'd'}, {0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        if (o == 'd')
            dir = optarg;
        else
            return usage_error("%s", "usage: migrate [--dir DIR]");
    }
    if (optind != argc)
        return usage_error("unexpected argument \"%s\"", argv[optind]);
    struct loom_err err = LOOM_ERR_INIT;
    struct migration *m = NULL;
    size_t n = 0;
    if (load_migrations(dir, &m, &n, &err) < 0)
        return fail(&err);
    struct loom_db *db = NULL;
    int rc = 1;
    if (open_db(&db, &err) < 0)
        goto out;
    PGconn *c = loom_db_conn(db);
    if (exec_raw(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", &err) < 0 ||
        exec_raw(c,
                 "CREATE TABLE IF NOT EXISTS loom_migrations (filename text PRIMARY KEY, "
                 "sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
                 &err) < 0)
        goto out;
    rc = migrate_locked(db, dir, m, n, &err) < 0 ? 1 : 0;
    exec_raw(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")", NULL);
out:
    if (rc)
        fail(&err);
    loom_db_close(db);
    for (size_t i = 0; i < n; i++) {
        free(m[i].name);
        free(m[i].sql);
    }
    free(m);
    return rc;
}

/* ---- tables ------------------------------------------------------------ */

void print_table(PGresult *res, const char *const *headers)
{
    int nc = PQnfields(res), nr = PQntuples(res);
    size_t w[32] = {0};
    for (int c = 0; c < nc && c < 32; c++) {
        w[c] = strlen(headers[c]);
        for (int r = 0; r < nr; r++) {
            size_t l = strlen(PQgetvalue(res, r, c));
            if (l > w[c])
                w[c] = l;
        }
    }
    for (int c = 0; c < nc && c < 32; c++)
        printf("%-*s%s", (int)w[c], headers[c], c + 1 < nc ? "  " : "\n");
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc && c < 32; c++)
            printf("%-*s%s", (int)w[c], PQgetisnull(res, r, c) ? "-" : PQgetvalue(res, r, c),
                   c + 1 < nc ? "  " : "\n");
}

int query_print(const char *sql, const char *const *headers, int n, const char *const *params)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db = NULL;
    if (open_db(&db, &err) < 0)
        return fail(&err);
    PGresult *res = loom_db_exec(db, sql, n, params, &err);
    if (!res) {
        loom_db_close(db);
        return fail(&err);
    }
    print_table(res, headers);
    PQclear(res);
    loom_db_close(db);
    return 0;
}

int exec_one(const char *sql, int n, const char *const *params, const char *notfound,
             const char *done)
{
    struct loom_err err = LOOM_ERR_INIT;
    struct loom_db *db = NULL;
    if (open_db(&db, &err) < 0)
        return fail(&err);
    PGresult *res = loom_db_exec(db, sql, n, params, &err);
    loom_db_close(db);
    if (!res)
        return fail(&err);
    bool hit = atoi(PQcmdTuples(res)) > 0;
    PQclear(res);
    if (!hit) {
        fprintf(stderr, "loom-admin: %s\n", notfound);
        return 1;
    }
    if (done)
        printf("%s\n", done);
    return 0;
}

#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

static int cmd_projects(int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "list") == 0 && argc == 1) {
        static const char *const h[] = {"NAME", "ID", "CREATED"};
        return query_print("SELECT name, id, " TS("created_at") " FROM projects ORDER BY name", h,
                           0, NULL);
    }
    if (argc == 2 && strcmp(argv[0], "create") == 0) {
        if (!loom_is_dns_label(argv[1]))
            return usage_error("project name \"%s\" must be a DNS label (a-z, 0-9, -)", argv[1]);
        const char *p[] = {argv[1]};
        char done[128];
        snprintf(done, sizeof(done), "created project %s", argv[1]);
        return exec_one("INSERT INTO projects (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", 1,
                        p, "a project with that name already exists", done);
    }
    return usage_error("%s", "usage: projects create NAME | projects list");
}

/* base64url without padding of n bytes into out (4 * ceil(n / 3) + 1 bytes). */
static int keys_create(int argc, char **argv)
{
    bool admin = false;
    const char *project = NULL, *role = NULL, *desc = "";
    static const struct option lo[] = {{"admin", no_argument, NULL, 'a'},
                                       {"project", required_argument, NULL, 'p'},
                                       {"role", required_argument, NULL, 'r'},
                                       {"description", required_argument, NULL, 'd'},
                                       {0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'a':
            admin = true;
            break;
        case 'p':
            project = optarg;
            break;
        case 'r':
            role = optarg;
            break;
        case 'd':
            desc = optarg;
            break;
        default:
            return 2;
        }
    }
    if (optind != argc)
        return usage_error("unexpected argument \"%s\"", argv[optind]);
    if (admin == (project != NULL))
        return usage_error("%s", "keys create needs either --admin or --project P --role R");
    if (admin && role && strcmp(role, "admin") != 0)
        return usage_error("%s", "--admin keys have the admin role");
    if (!admin && (!role || (strcmp(role, "read") != 0 && strcmp(role, "write") != 0)))
        return usage_error("%s", "--role must be read or write");

    struct loom_err err = LOOM_ERR_INIT;
    _cleanup_(loom_apikey_release) struct loom_apikey k = {0};
    if (loom_apikey_mint(&k, &err) < 0)
        return fail(&err);

    const char *params[] = {k.key_id, k.secret_sha256_hex, admin ? NULL : project,
                            admin ? "admin" : role, desc};
    char notfound[128];
    snprintf(notfound, sizeof(notfound), "project \"%s\" not found", admin ? "" : project);
    int rc = exec_one(LOOM_APIKEY_INSERT_SQL, 5, params, notfound, NULL);
    if (rc)
        return rc;
    /* the only time the secret is shown */
    printf("%s\n", k.key);
    fprintf(stderr, "key id %s (%s%s%s): store it now, it cannot be shown again\n", k.key_id,
            admin ? "admin" : role, admin ? "" : " on ", admin ? "" : project);
    return 0;
}

static int cmd_keys(int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "create") == 0)
        return keys_create(argc, argv);
    if (argc == 1 && strcmp(argv[0], "list") == 0) {
        static const char *const h[] = {"KEY_ID",  "ROLE",    "PROJECT",
                                        "CREATED", "REVOKED", "DESCRIPTION"};
        return query_print("SELECT k.key_id, k.role, coalesce(p.name, '*'), " TS(
                               "k.created_at") ", " TS("k.revoked_at") ", k.description "
                                                                       "FROM api_keys k LEFT "
                                                                       "JOIN projects p ON p.id "
                                                                       "= k.project_id ORDER BY "
                                                                       "k.id",
                           h, 0, NULL);
    }
    if (argc == 2 && strcmp(argv[0], "revoke") == 0) {
        const char *id = argv[1];
        if (strncmp(id, "loom_", 5) == 0 && strlen(id) >= 17) {
            /* a whole key was pasted: take its id, never keep the secret */
            static char idbuf[13];
            memcpy(idbuf, id + 5, 12);
            idbuf[12] = '\0';
            id = idbuf;
        }
        const char *p[] = {id};
        return exec_one("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND "
                        "revoked_at IS NULL",
                        1, p, "no such key, or it was already revoked", "revoked");
    }
    return usage_error("%s", "usage: keys create ... | keys list | keys revoke KEY_ID");
}

/* Best effort: wake the scheduler so that a cordon or drain acts now ("nodes":
 * it re-reads the nodes instead of placing from the ones it holds). */
static void wake_scheduler(void)
{
    if (!nats_url || !*nats_url)
        return;
    struct loom_bus *bus = NULL;
    struct loom_err err = LOOM_ERR_INIT;
    if (loom_bus_connect(nats_url, "loom-admin", 2000, &bus, &err) == 0)
        loom_bus_publish_raw(bus, LOOM_SUBJ_SCHED_WAKE, "nodes", 5, &err);
    loom_bus_close(bus, 1000);
}

static int cmd_nodes(int argc, char **argv)
{
    if (argc == 1 && strcmp(argv[0], "list") == 0) {
        static const char *const h[] = {"NAME",       "STATE",     "ADDRESS",        "CPU_MILLIS",
                                        "MEMORY_MIB", "INSTANCES", "LAST_HEARTBEAT", "HEALTH"};
        /* HEALTH: ok, or what the node's checks found; who took it out of
         * service, when someone did */
        return query_print(
            "SELECT n.name, n.state, n.address, n.cpu_millis, n.memory_bytes / 1048576, "
            "(SELECT count(*) FROM instances i WHERE i.node_name = n.name "
            "AND i.state IN " LOOM_LIVE_STATES_SQL
            "), " TS("n.last_heartbeat") ", "
                                         "coalesce(n.health_problem, 'ok') || coalesce(' (' || "
                                         "n.state || ' by ' || "
                                         "n.cordoned_by || ')', '') FROM nodes n ORDER BY n.name",
            h, 0, NULL);
    }
    if (argc == 2) {
        const char *p[] = {argv[1]};
        const char *sql = NULL;
        if (strcmp(argv[0], "cordon") == 0)
            sql = LOOM_NODE_CORDON_SQL;
        else if (strcmp(argv[0], "uncordon") == 0)
            sql = LOOM_NODE_UNCORDON_SQL;
        else if (strcmp(argv[0], "drain") == 0)
            sql = LOOM_NODE_DRAIN_SQL;
        if (sql) {
            char done[160];
            snprintf(done, sizeof(done), "node %s: %s", argv[1],
                     argv[0][0] == 'c'   ? "cordoned"
                     : argv[0][0] == 'u' ? "ready"
                                         : "draining");
            char notfound[160];
            snprintf(notfound, sizeof(notfound),
                     argv[0][0] == 'u' ? "no cordoned or draining node named \"%s\""
                                       : "no node named \"%s\" (or it is lost)",
                     argv[1]);
            int rc = exec_one(sql, 1, p, notfound, done);
            if (rc == 0)
                wake_scheduler();
            return rc;
        }
    }
    return usage_error("%s", "usage: nodes list | nodes cordon|uncordon|drain NAME");
}

/* ---- status ------------------------------------------------------------ */

static void status_row(const char *what, const char *where, bool ok, const char *detail)
{
    printf("%-14s %-28s %-5s %s\n", what, where, ok ? "ok" : "FAIL", detail);
}

extern char **environ;

static int cmd_status(int argc, char **argv)
{
    (void)argv;
    if (argc != 0)
        return usage_error("%s", "usage: status");
    int bad = 0;
    struct loom_err err = LOOM_ERR_INIT;
    printf("%-14s %-28s %-5s %s\n", "COMPONENT", "ADDRESS", "STATE", "DETAIL");
    struct loom_db *db = NULL;
    if (open_db(&db, &err) < 0) {
        status_row("postgresql", "-", false, err.msg);
        bad++;
    } else {
        PGresult *res = loom_db_exec(
            db,
            "SELECT (SELECT count(*) FROM loom_migrations)::text || ' migrations, ' || "
            "(SELECT count(*) FROM nodes WHERE state <> 'lost')::text || ' nodes'",
            0, NULL, &err);
        char where[300];
        snprintf(where, sizeof(where), "%s:%s", PQhost(loom_db_conn(db)), PQport(loom_db_conn(db)));
        status_row("postgresql", where, res != NULL, res ? PQgetvalue(res, 0, 0) : err.msg);
        bad += res == NULL;
        PQclear(res);
    }
    loom_db_close(db);
    if (nats_url && *nats_url) {
        struct loom_bus *bus = NULL;
        loom_err_clear(&err);
        int rc = loom_bus_connect(nats_url, "loom-admin", 2000, &bus, &err);
        status_row("nats", nats_url, rc == 0, rc == 0 ? "connected" : err.msg);
        bad += rc != 0;
        loom_bus_close(bus, 500);
    } else {
        status_row("nats", "-", false, "LOOM_NATS_URL is not set");
        bad++;
    }
    loom_httpc_global_init();
    for (char **e = environ; *e; e++) {
        const char *v = strchr(*e, '=');
        size_t kl = v ? (size_t)(v - *e) : 0;
        if (strncmp(*e, "LOOM_", 5) != 0 || kl < 11 || strncmp(v - 5, "_ADDR", 5) != 0)
            continue;
        char svc[64];
        snprintf(svc, sizeof(svc), "%.*s", (int)(kl - 10), *e + 5);
        for (char *p = svc; *p; p++)
            *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
        const char *addr = v + 1;
        char url[512];
        snprintf(url, sizeof(url), "http://%s%s/readyz", addr[0] == ':' ? "127.0.0.1" : "", addr);
        struct loom_httpc_req hreq = {.url = url, .timeout_ms = 2000};
        struct loom_httpc_resp resp = {.body = STRBUF_INIT};
        loom_err_clear(&err);
        int rc = loom_httpc_do(&hreq, &resp, &err);
        char detail[600];
        if (rc < 0)
            snprintf(detail, sizeof(detail), "%s", err.msg);
        else
            snprintf(detail, sizeof(detail), "HTTP %ld %.200s", resp.status, resp.body.buf);
        for (char *p = detail; *p; p++)
            if (*p == '\n')
                *p = ' ';
        bool ok = rc == 0 && resp.status == 200;
        status_row(svc, addr, ok, detail);
        bad += !ok;
        loom_httpc_resp_release(&resp);
    }
    loom_httpc_global_cleanup();
    return bad ? 1 : 0;
}

/* ---- quota ------------------------------------------------------------- */

/* "0.5" vCPU -> "500" millis; "none" -> NULL (no limit). */
static int parse_cpu(const char *s, char buf[24], const char **ret)
{
    int64_t millis;
    if (strcmp(s, "none") == 0) {
        *ret = NULL;
        return 0;
    }
    if (loom_cpu_parse(s, &millis, NULL) < 0)
        return -1;
    snprintf(buf, 24, "%lld", (long long)millis);
    *ret = buf;
    return 0;
}

/* "512G", "256Mi", "1024" (bytes) -> bytes as text; "none" -> NULL. */
static int parse_bytes(const char *s, char buf[24], const char **ret)
{
    int64_t bytes;
    if (strcmp(s, "none") == 0) {
        *ret = NULL;
        return 0;
    }
    if (loom_size_parse(s, LOOM_SIZE_ANY, &bytes, NULL) < 0)
        return -1;
    snprintf(buf, 24, "%lld", (long long)bytes);
    *ret = buf;
    return 0;
}

/* A non-negative integer as text; "none" -> NULL. */
static int parse_count(const char *s, char buf[24], const char **ret)
{
    if (strcmp(s, "none") == 0) {
        *ret = NULL;
        return 0;
    }
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < 0 || v > INT32_MAX)
        return -1;
    snprintf(buf, 24, "%ld", v);
    *ret = buf;
    return 0;
}

static int cmd_quota(int argc, char **argv)
{
    static const char usage_q[] =
        "usage: quota get --project P | quota set --project P [--cpu VCPU] [--memory BYTES]\n"
        "       [--gpus N] [--instances N]   (a value \"none\" removes that limit)";
    if (argc < 1 || (strcmp(argv[0], "get") != 0 && strcmp(argv[0], "set") != 0))
        return usage_error("%s", usage_q);
    bool set = strcmp(argv[0], "set") == 0;
    const char *project = NULL;
    /* Each value: given (text or NULL for "none"), or not given (keep). */
    const char *val[4] = {NULL, NULL, NULL, NULL};
    bool given[4] = {false, false, false, false};
    char buf[4][24];
    static const char *const names[4] = {"--cpu", "--memory", "--gpus", "--instances"};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--project") == 0 && i + 1 < argc) {
            project = argv[++i];
            continue;
        }
        int k = -1;
        for (int j = 0; j < 4; j++)
            if (strcmp(argv[i], names[j]) == 0)
                k = j;
        if (k < 0 || !set || i + 1 >= argc)
            return usage_error("%s", usage_q);
        const char *v = argv[++i];
        int rc = k == 0   ? parse_cpu(v, buf[k], &val[k])
                 : k == 1 ? parse_bytes(v, buf[k], &val[k])
                          : parse_count(v, buf[k], &val[k]);
        if (rc < 0)
            return usage_error("invalid value \"%s\"", v);
        given[k] = true;
    }
    if (!project)
        return usage_error("%s", usage_q);
    if (set) {
        const char *p[] = {project,
                           val[0],
                           val[1],
                           val[2],
                           val[3],
                           given[0] ? "t" : "f",
                           given[1] ? "t" : "f",
                           given[2] ? "t" : "f",
                           given[3] ? "t" : "f"};
        char done[128];
        snprintf(done, sizeof(done), "quota of project %s set", project);
        int rc = exec_one(
            "INSERT INTO project_quotas AS q (project_id, cpu_millis, memory_bytes, gpus, "
            "instances) "
            "SELECT id, $2::bigint, $3::bigint, $4::integer, $5::integer FROM projects WHERE name "
            "= $1 "
            "ON CONFLICT (project_id) DO UPDATE SET "
            "cpu_millis = CASE WHEN $6::boolean THEN EXCLUDED.cpu_millis ELSE q.cpu_millis END, "
            "memory_bytes = CASE WHEN $7::boolean THEN EXCLUDED.memory_bytes ELSE q.memory_bytes "
            "END, "
            "gpus = CASE WHEN $8::boolean THEN EXCLUDED.gpus ELSE q.gpus END, "
            "instances = CASE WHEN $9::boolean THEN EXCLUDED.instances ELSE q.instances END, "
            "updated_at = now()",
            9, p, "project not found", done);
        if (rc != 0)
            return rc;
        /* A raised quota may let waiting work run now. */
        wake_scheduler();
    }
    static const char *const h[] = {"PROJECT", "CPU",       "MEMORY_BYTES",
                                    "GPUS",    "INSTANCES", "UPDATED"};
    const char *p[] = {project};
    return query_print(
        "SELECT p.name, (q.cpu_millis / 1000.0)::numeric(12,3)::text, "
        "q.memory_bytes, q.gpus, q.instances, " TS(
            "q.updated_at") " "
                            "FROM projects p LEFT JOIN project_quotas q ON q.project_id = p.id "
                            "WHERE p.name = $1",
        h, 1, p);
}

/* ---- function runtimes ------------------------------------------------ */

static int cmd_runtimes(int argc, char **argv)
{
    if (argc == 1 && strcmp(argv[0], "list") == 0) {
        /* with its instances: the free stem cells, those starting, those
         * claimed by functions, and the calls waiting for one now */
        static const char *const h[] = {"NAME",     "LANGUAGE", "DEFAULT", "DEPRECATED", "FREE",
                                        "STARTING", "CLAIMED",  "WAITING", "IMAGE"};
        return query_print(
            "SELECT r.name, r.language, r.is_default, r.deprecated, "
            "  count(*) FILTER (WHERE i.claimed_at IS NULL AND i.state = 'running'), "
            "  count(*) FILTER (WHERE i.claimed_at IS NULL AND i.state <> 'running'), "
            "  count(*) FILTER (WHERE i.claimed_at IS NOT NULL), "
            "  (SELECT coalesce(sum(d.waiting), 0) FROM function_stem_demand d "
            "   WHERE d.runtime = r.name AND d.updated_at > now() - interval '5 seconds'), "
            "  r.image "
            "FROM function_runtimes r LEFT JOIN instances i ON i.kind = 'function' "
            "  AND i.runtime = r.name AND i.desired = 'run' AND i.state IN " LOOM_LIVE_STATES_SQL
            " GROUP BY r.name ORDER BY r.name",
            h, 0, NULL);
    }
    if (argc < 2 || strcmp(argv[0], "register") != 0)
        return usage_error("%s", "usage: runtimes list | runtimes register NAME --image REF "
                                 "--language L [--default] [--deprecated]");
    const char *name = argv[1], *image = NULL, *language = NULL;
    bool is_default = false, deprecated = false;
    static const struct option lo[] = {{"image", required_argument, NULL, 'i'},
                                       {"language", required_argument, NULL, 'l'},
                                       {"default", no_argument, NULL, 'd'},
                                       {"deprecated", no_argument, NULL, 'x'},
                                       {0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc - 1, argv + 1, "", lo, NULL)) != -1) {
        switch (o) {
        case 'i':
            image = optarg;
            break;
        case 'l':
            language = optarg;
            break;
        case 'd':
            is_default = true;
            break;
        case 'x':
            deprecated = true;
            break;
        default:
            return 2;
        }
    }
    if (optind != argc - 1 || !image || !language)
        return usage_error("%s", "runtimes register needs NAME, --image and --language");
    const char *p[] = {name, language, image, is_default ? "t" : "f", deprecated ? "t" : "f"};
    char done[160];
    snprintf(done, sizeof(done), "registered runtime %s (%s)", name, image);
    /* one default per language: registering a default takes it from the others */
    return exec_one("WITH d AS (UPDATE function_runtimes SET is_default = false "
                    "  WHERE $4::boolean AND language = $2 AND name <> $1) "
                    "INSERT INTO function_runtimes (name, language, image, is_default, deprecated) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET "
                    "language = $2, image = $3, is_default = $4, deprecated = $5",
                    5, p, "not registered", done);
}

/* ---- build stacks ------------------------------------------------------- */

/* The tools directory (tools/lib/stacks.sh): LOOM_TOOLS_DIR, else found
 * above this program (build/bin/loom-admin in a checkout). */
static int tools_dir(char *buf, size_t len)
{
    const char *env = getenv("LOOM_TOOLS_DIR");
    if (env && *env) {
        snprintf(buf, len, "%s", env);
        return 0;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n < 0)
        return -1;
    exe[n] = '\0';
    for (int up = 0; up < 5; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash)
            break;
        *slash = '\0';
        char probe[4200];
        snprintf(probe, sizeof(probe), "%s/tools/lib/stacks.sh", exe);
        if (access(probe, R_OK) == 0 && strlen(exe) + 7 <= len) {
            memcpy(buf, exe, strlen(exe));
            memcpy(buf + strlen(exe), "/tools", 7);
            return 0;
        }
    }
    return -1;
}

/* Runs the function fn of tools/lib/stacks.sh with arguments a1 and a2
 * (a2 may be NULL) in bash; its standard output's last line into out (the
 * rest of its output passes through). The exit status, or -1. */
static int stacks_sh(const char *tools, const char *fn, const char *a1, const char *a2, char *out,
                     size_t outlen)
{
    static const char script[] = ". \"$0/lib/stacks.sh\" && \"$1\" \"$2\" ${3:+\"$3\"}";
    const char *argv[] = {"bash", "-c", script, tools, fn, a1, a2, NULL};
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        execvp("bash", (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    _cleanup_fclose_ FILE *f = pid > 0 ? fdopen(p[0], "r") : NULL;
    if (!f) {
        close(p[0]);
        return -1;
    }
    char line[1024];
    out[0] = '\0';
    while (fgets(line, sizeof(line), f))
        snprintf(out, outlen, "%s", line);
    out[strcspn(out, "\n")] = '\0';
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int stack_register(const char *name, const char *image, const char *description)
{
    const char *p[] = {name, image, description ? description : ""};
    char done[700];
    snprintf(done, sizeof(done), "registered stack %s (%s)", name, image);
    return exec_one("INSERT INTO build_stacks (name, image, description) VALUES ($1, $2, $3) "
                    "ON CONFLICT (name) DO UPDATE SET image = $2, description = CASE WHEN $3 = "
                    "'' THEN build_stacks.description ELSE $3 END, updated_at = now()",
                    3, p, "not registered", done);
}

static int cmd_stack(int argc, char **argv)
{
    if (argc == 1 && strcmp(argv[0], "list") == 0) {
        static const char *const h[] = {"NAME", "IMAGE", "DESCRIPTION", "UPDATED"};
        return query_print(
            "SELECT name, image, description, " TS("updated_at") " FROM build_stacks ORDER BY name",
            h, 0, NULL);
    }
    if (argc < 2 || (strcmp(argv[0], "register") != 0 && strcmp(argv[0], "build") != 0))
        return usage_error("%s", "usage: stack list | stack build NAME --registry HOST:PORT | "
                                 "stack register NAME --image REF");
    bool build = strcmp(argv[0], "build") == 0;
    const char *name = argv[1], *image = NULL, *registry = NULL, *description = NULL;
    static const struct option lo[] = {{"image", required_argument, NULL, 'i'},
                                       {"registry", required_argument, NULL, 'r'},
                                       {"description", required_argument, NULL, 'd'},
                                       {0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc - 1, argv + 1, "", lo, NULL)) != -1) {
        switch (o) {
        case 'i':
            image = optarg;
            break;
        case 'r':
            registry = optarg;
            break;
        case 'd':
            description = optarg;
            break;
        default:
            return 2;
        }
    }
    if (optind != argc - 1 || (build ? !registry : !image))
        return usage_error("%s", build ? "stack build needs NAME and --registry HOST:PORT"
                                       : "stack register needs NAME and --image REF");
    if (!build)
        return stack_register(name, image, description);
    char tools[4096];
    if (tools_dir(tools, sizeof(tools)) < 0)
        return usage_error("%s", "cannot find tools/lib/stacks.sh: set LOOM_TOOLS_DIR");
    /* the shell library builds (or finds in its cache) and pushes; it prints REF@DIGEST */
    char ref[1024], desc[512] = "";
    if (stacks_sh(tools, "stack_push", name, registry, ref, sizeof(ref)) != 0 ||
        !strchr(ref, '@')) {
        fprintf(stderr, "loom-admin: stack %s: could not build or push it\n", name);
        return 1;
    }
    if (!description && stacks_sh(tools, "stack_get", name, "description", desc, sizeof(desc)) != 0)
        desc[0] = '\0';
    return stack_register(name, ref, description ? description : desc);
}

int main(int argc, char **argv)
{
    pg_dsn = getenv("LOOM_PG_DSN");
    nats_url = getenv("LOOM_NATS_URL");
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--pg-dsn") == 0 && i + 1 < argc) {
            pg_dsn = argv[++i];
        } else if (strncmp(a, "--pg-dsn=", 9) == 0) {
            pg_dsn = a + 9;
        } else if (strcmp(a, "--nats-url") == 0 && i + 1 < argc) {
            nats_url = argv[++i];
        } else if (strncmp(a, "--nats-url=", 11) == 0) {
            nats_url = a + 11;
        } else {
            return usage_error("unknown option \"%s\"", a);
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    int sub_argc = argc - i - 1;
    char **sub_argv = argv + i + 1;
    if (strcmp(cmd, "migrate") == 0)
        return cmd_migrate(sub_argc + 1, argv + i);
    if (strcmp(cmd, "projects") == 0)
        return cmd_projects(sub_argc, sub_argv);
    if (strcmp(cmd, "keys") == 0)
        return cmd_keys(sub_argc, sub_argv);
    if (strcmp(cmd, "nodes") == 0)
        return cmd_nodes(sub_argc, sub_argv);
    if (strcmp(cmd, "status") == 0)
        return cmd_status(sub_argc, sub_argv);
    if (strcmp(cmd, "quota") == 0)
        return cmd_quota(sub_argc, sub_argv);
    if (strcmp(cmd, "runtimes") == 0)
        return cmd_runtimes(sub_argc, sub_argv);
    if (strcmp(cmd, "stack") == 0 || strcmp(cmd, "stacks") == 0)
        return cmd_stack(sub_argc, sub_argv);
    if (strcmp(cmd, "prices") == 0)
        return cmd_prices(sub_argc, sub_argv);
    if (strcmp(cmd, "usage") == 0)
        return cmd_usage(sub_argc, sub_argv);
    if (strcmp(cmd, "logs") == 0)
        return cmd_logs(sub_argc, sub_argv);
    return usage_error("unknown command \"%s\"", cmd);
}
