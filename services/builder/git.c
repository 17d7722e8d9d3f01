/* git sources (not carried out yet). */
#include "builder.h"

int git_fetch(struct brun *r, const char *dest, char ret_commit[64], struct loom_err *err)
{
    (void)r, (void)dest, (void)ret_commit;
    return loom_err_set(err, LOOM_EINVAL, "git sources are not available on this builder yet");
}
