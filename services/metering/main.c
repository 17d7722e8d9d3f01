/* loom-metering: usage samples into PostgreSQL (rating and export to come). */
#include "metering.h"
#include "service.h"

static const struct loom_service_def def = {
    .name = "metering",
    .default_addr = "127.0.0.1:0",
    .tick_ms = 10,
    .http_threads = 2,
    .needs_db = true,
    .start = meter_start,
    .ready = meter_ready,
    .tick = meter_tick,
    .stop = meter_stop,
};

int main(int argc, char **argv)
{
    return loom_service_main(&def, argc, argv);
}
