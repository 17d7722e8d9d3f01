/* loom-agent: the node agent. `loom-agent shim ...` is the per-instance shim
 * and `loom-agent cleanup ...` removes what a state dir accounts for; both
 * are the same binary so that the shim always matches its agent.
 * `loom-agent --simulate N` runs N simulated nodes instead (simulate.h). */
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "service.h"
#include "simulate.h"

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

/* agent_opts and sim_opts in one table; an agent option that the simulation
 * also has is served by the simulation's entry when simulating, so that it
 * is parsed once into the part that runs. */
static struct loom_opt *all_opts(bool simulate, size_t *ret_n)
{
    struct loom_opt *t = calloc(agent_nopts + sim_nopts, sizeof(*t));
    if (!t)
        abort();
    size_t n = 0;
    for (size_t i = 0; i < agent_nopts; i++) {
        bool shadowed = false;
        for (size_t k = 0; k < sim_nopts && simulate; k++)
            shadowed |= strcmp(agent_opts[i].flag, sim_opts[k].flag) == 0;
        if (!shadowed)
            t[n++] = agent_opts[i];
    }
    for (size_t k = 0; k < sim_nopts; k++) {
        bool dup = false;
        for (size_t i = 0; i < agent_nopts && !simulate; i++)
            dup |= strcmp(agent_opts[i].flag, sim_opts[k].flag) == 0;
        if (!dup)
            t[n++] = sim_opts[k];
    }
    *ret_n = n;
    return t;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "shim") == 0)
        return shim_main(argc, argv);
    if (argc > 1 && strcmp(argv[1], "cleanup") == 0)
        return sweep_main(argc, argv);
    struct loom_service_def d = def;
    bool simulate = sim_requested(argc, argv);
    struct loom_opt *opts = all_opts(simulate, &d.nopts);
    d.opts = opts;
    if (simulate) {
        d.start = sim_start;
        d.ready = sim_ready;
        d.tick = sim_tick;
        d.stop = sim_stop;
    }
    int rc = loom_service_main(&d, argc, argv);
    free(opts);
    return rc;
}
