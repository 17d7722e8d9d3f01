/* Why a step failed: the one line of its output worth putting in the run's
 * reason. Each tool says it its own way. */
#include <ctype.h>
#include <string.h>

#include "builder.h"

/* "main.go:7:2: ..." */
static bool compiler_line(const char *s)
{
    const char *colon = strchr(s, ':');
    if (!colon || colon == s || !strstr(s, ".go:"))
        return false;
    return isdigit((unsigned char)colon[1]);
}

const char *step_failure_line(enum step_kind k, json_t *lines)
{
    size_t i, n = json_array_size(lines);
    json_t *v;
    const char *last = NULL, *first_err = NULL;
    json_array_foreach(lines, i, v)
    {
        const char *s = json_string_value(v);
        if (!s)
            continue;
        while (*s == ' ' || *s == '\t')
            s++;
        if (!*s)
            continue;
        last = s;
        switch (k) {
        case STEP_NPM:
            /* "npm ERR! code E404" says little; the line after it says what */
            if (strncmp(s, "npm ERR! ", 9) == 0 && strncmp(s + 9, "code ", 5) != 0 &&
                strncmp(s + 9, "errno ", 6) != 0 && !first_err)
                first_err = s;
            break;
        case STEP_PIP:
            if (strstr(s, "No matching distribution found for"))
                return s;
            if (strncmp(s, "ERROR: ", 7) == 0 && !first_err)
                first_err = s;
            break;
        case STEP_GO:
            if (compiler_line(s) || strncmp(s, "go: ", 4) == 0)
                return s;
            break;
        case STEP_BUILDAH:
            if (strstr(s, "error building at STEP") || strncmp(s, "Error: ", 7) == 0)
                return s;
            break;
        case STEP_OTHER:
            break;
        }
    }
    (void)n;
    return first_err ? first_err : last;
}
