/* loom: printing helpers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"

#include "cli.h"

const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

long long jint(json_t *o, const char *k)
{
    return (long long)json_integer_value(json_object_get(o, k));
}

void print_raw(const struct reply *r)
{
    fputs(r->raw ? r->raw : "", stdout);
    if (r->raw && *r->raw && r->raw[strlen(r->raw) - 1] != '\n')
        putchar('\n');
}
