/* loom secret and loom configmap: one command for both key-value kinds. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "json.h"
#include "strbuf.h"
#include "util.h"
#include "cli.h"

/* A whole file as a string (secrets and config maps: at most 1 MiB). */
static int read_small_file(const char *path, char **ret)
{
    _cleanup_fclose_ FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "loom: could not open \"%s\": %s\n", path, strerror(errno));
        return EXIT_USAGE;
    }
    struct strbuf sb = STRBUF_INIT;
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
        strbuf_add(&sb, buf, n);
        if (sb.len > 1024 * 1024) {
            strbuf_release(&sb);
            fprintf(stderr, "loom: \"%s\" is over 1 MiB\n", path);
            return EXIT_USAGE;
        }
    }
    *ret = strbuf_detach(&sb, NULL);
    return 0;
}

/* Data from --from-file KEY=PATH, --from-env-file PATH (KEY=VALUE lines,
 * # comments), registry --server/--username/--password[/--email] and tls
 * --cert-chain-file/--private-key-file (keys tls_cert, tls_key). */
static int put_kv_sources(struct args *a, json_t *data)
{
    size_t i;
    json_t *v;
    json_array_foreach(find_flag(a, "from-file")->values, i, v)
    {
        const char *kv = json_string_value(v), *eq = strchr(kv, '=');
        if (!eq || eq == kv || !eq[1])
            return usage_err("--from-file \"%s\" is not KEY=PATH", kv);
        _cleanup_free_ char *k = strndup(kv, (size_t)(eq - kv));
        char *text;
        int rc = read_small_file(eq + 1, &text);
        if (rc)
            return rc;
        json_object_set_new(data, k, json_string(text));
        free(text);
    }
    json_array_foreach(find_flag(a, "from-env-file")->values, i, v)
    {
        _cleanup_free_ char *text = NULL;
        int rc = read_small_file(json_string_value(v), &text);
        if (rc)
            return rc;
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            trim(line);
            if (!*line || line[0] == '#')
                continue;
            char *eq = strchr(line, '=');
            if (!eq || eq == line)
                return usage_err("--from-env-file: line \"%s\" is not KEY=VALUE", line);
            *eq = '\0';
            json_object_set_new(data, line, json_string(eq + 1));
        }
    }
    static const char *const reg[][2] = {{"server", "server"},
                                         {"username", "username"},
                                         {"password", "password"},
                                         {"email", "email"}};
    for (size_t r = 0; r < LOOM_ARRAY_SIZE(reg); r++)
        if (fval(a, reg[r][0]))
            json_object_set_new(data, reg[r][1], json_string(fval(a, reg[r][0])));
    static const char *const tls[][2] = {{"cert-chain-file", "tls_cert"},
                                         {"private-key-file", "tls_key"}};
    for (size_t t = 0; t < LOOM_ARRAY_SIZE(tls); t++) {
        if (!fval(a, tls[t][0]))
            continue;
        char *text;
        int rc = read_small_file(fval(a, tls[t][0]), &text);
        if (rc)
            return rc;
        json_object_set_new(data, tls[t][1], json_string(text));
        free(text);
    }
    return 0;
}

/* loom secret|configmap create|update NAME --from-literal K=V... [--format F] */
int cmd_kv(const char *coll, const char *what, const char *verb, int argc, char **argv)
{
    int rc = need_project();
    if (rc)
        return rc;
    struct flag flags[] = {
        VFLAG("name"),   RFLAG("from-literal"),    RFLAG("from-file"),       RFLAG("from-env-file"),
        VFLAG("format"), VFLAG("server"),          VFLAG("username"),        VFLAG("password"),
        VFLAG("email"),  VFLAG("cert-chain-file"), VFLAG("private-key-file")};
    struct args a = {.flags = flags, .nflags = LOOM_ARRAY_SIZE(flags)};
    if ((rc = parse_args(&a, argc, argv)))
        return rc;
    struct reply r = {0};
    bool create = strcmp(verb, "create") == 0;
    if (create || strcmp(verb, "update") == 0) {
        const char *name = NULL;
        _cleanup_json_ json_t *body = json_object();
        json_t *data = json_object();
        json_object_set_new(body, "data", data);
        rc = take_name(&a, what, &name);
        struct flag *lit = find_flag(&a, "from-literal");
        if (!rc)
            rc = put_kv_sources(&a, data);
        if (!rc && json_object_size(data) == 0 && !lit->values)
            rc = usage_err("%s", "give the data as --from-literal KEY=VALUE, --from-file "
                                 "KEY=PATH, --from-env-file PATH (repeatable), or --server "
                                 "--username --password, or --cert-chain-file "
                                 "--private-key-file");
        size_t i;
        json_t *v;
        json_array_foreach(lit->values, i, v)
        {
            const char *kvs = json_string_value(v), *eq = strchr(kvs, '=');
            if (!rc && (!eq || eq == kvs))
                rc = usage_err("--from-literal \"%s\" is not KEY=VALUE", kvs);
            if (!rc) {
                _cleanup_free_ char *k = strndup(kvs, (size_t)(eq - kvs));
                json_object_set_new(data, k, json_string(eq + 1));
            }
        }
        if (!rc && fval(&a, "format"))
            json_object_set_new(body, "format", json_string(fval(&a, "format")));
        if (!rc && create)
            json_object_set_new(body, "name", json_string(name));
        if (!rc)
            rc = write_resource(coll, what, name, create, "PUT", body);
        args_release(&a);
        return rc;
    } else if (strcmp(verb, "get") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath(coll, a.pos[0], NULL);
        args_release(&a);
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("Name:        %s\n", jstr(r.json, "name"));
            if (json_object_get(r.json, "format"))
                printf("Format:      %s\n", jstr(r.json, "format"));
            printf("Generation:  %lld\n", jint(r.json, "generation"));
            printf("Updated:     %s\n", jstr(r.json, "updated_at"));
            json_t *data = json_object_get(r.json, "data");
            size_t i;
            json_t *k;
            printf("Data:\n");
            json_array_foreach(json_object_get(r.json, "data_keys"), i, k)
            {
                const char *key = json_string_value(k);
                if (data)
                    printf("  %s=%s\n", key, jstr(data, key));
                else
                    printf("  %s (value hidden from read keys)\n", key);
            }
        }
    } else if (strcmp(verb, "list") == 0 && a.npos == 0) {
        args_release(&a);
        _cleanup_free_ char *path = ppath(coll, NULL, "?limit=1000");
        if ((rc = api_call("GET", path, NULL, &r)))
            return rc;
        if (cfg.json) {
            print_raw(&r);
        } else {
            printf("%-32s %-5s %s\n", "NAME", "KEYS", "UPDATED");
            size_t i;
            json_t *x;
            json_array_foreach(json_object_get(r.json, coll), i, x)
                printf("%-32s %-5zu %s\n", jstr(x, "name"),
                       json_array_size(json_object_get(x, "data_keys")), jstr(x, "updated_at"));
        }
    } else if (strcmp(verb, "delete") == 0 && a.npos == 1) {
        _cleanup_free_ char *path = ppath(coll, a.pos[0], NULL);
        const char *name = a.pos[0];
        args_release(&a);
        if ((rc = api_call("DELETE", path, NULL, &r)))
            return rc;
        printf("%s %s deleted\n", what, name);
    } else {
        args_release(&a);
        return usage_err("unknown or incomplete command \"%s\"", verb);
    }
    reply_release(&r);
    return EXIT_OK;
}
