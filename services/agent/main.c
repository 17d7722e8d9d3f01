/* loom-agent: the node agent. `loom-agent shim ...` is the per-instance shim
 * and `loom-agent cleanup ...` removes what a state dir accounts for; both
 * are the same binary so that the shim always matches its agent. */
#include <string.h>

#include "agent.h"
#include "service.h"

static const struct loom_service_def def = {
    .name = "agent",
    .default_addr = "127.0.0.1:0",
    .tick_ms = 1000,
    .opts = agent_opts,
    .needs_db = false,
    .start = agent_start,
    .ready = agent_ready,
    .tick = agent_tick,
    .stop = agent_stop,
};

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "shim") == 0)
        return shim_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "cleanup") == 0)
        return cleanup_main(argc, argv);
    struct loom_service_def d = def;
    d.nopts = agent_nopts;
    return loom_service_main(&d, argc, argv);
}
