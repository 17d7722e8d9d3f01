/* loom-agent --simulate N: N simulated nodes in one process, for scale tests
 * of the scheduler through the whole path (API, scheduler, PostgreSQL, NATS,
 * reports).
 *
 * The nodes are named <node-name>-sim-00000 ... and register with
 * simulated=true, --cpu-millis / --memory each (defaults 32 vCPU, 128Gi) and
 * --simulate-gpus GPUs of --simulate-gpu-model. One NATS connection carries
 * every node's heartbeat (each --heartbeat-interval), assigns, stops and
 * reports. No container runs and no image is pulled: an assign is
 * acknowledged, reported RUNNING at once, and a job instance then ends as
 * its command says, read as a shell line:
 *   "sleep N"  runs N seconds (virtually; N may be fractional)
 *   "exit N"   ends FAILED with exit code N (N != 0), else SUCCEEDED
 * Without "sleep" it runs --simulate-run-time (default 0). The instance's
 * max_execution_seconds applies (FAILED, timed_out). App instances run
 * until stopped. Assigns from an epoch below the highest seen are refused
 * with stale_epoch, as the real agent does. */
#ifndef LOOM_AGENT_SIMULATE_H
#define LOOM_AGENT_SIMULATE_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "err.h"

struct loom_service;

/* The simulation's own options (--simulate and the node shape). main.c
 * serves them beside agent_opts, dropping agent options of the same name
 * when simulating. */
extern const struct loom_opt sim_opts[];
extern const size_t sim_nopts;

/* True when argv or the environment (LOOM_AGENT_SIMULATE) asks for a
 * simulation with at least one node. */
bool sim_requested(int argc, char **argv);

int sim_start(struct loom_service *svc, struct loom_err *err);
void sim_tick(struct loom_service *svc);
void sim_stop(struct loom_service *svc);
bool sim_ready(struct loom_service *svc);

#endif
