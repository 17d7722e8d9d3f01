/* loom-builder: source to image (not implemented yet; refuses requests). */
#include "builder.h"
#include "service.h"

static const struct loom_service_def def = {
    .name = "builder",
    .default_addr = "127.0.0.1:0",
    .http_threads = 2,
    .needs_db = true,
    .start = builder_start,
};

int main(int argc, char **argv)
{
    return loom_service_main(&def, argc, argv);
}
