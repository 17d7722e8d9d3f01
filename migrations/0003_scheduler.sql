-- Scheduler additions: why work waits, and GPU accounting per instance.

-- Set by the scheduler when a run or app cannot be placed, e.g.
-- "no node fits cpu=2000m memory=4G"; NULL once it places again.
ALTER TABLE job_runs ADD COLUMN waiting_reason text;
ALTER TABLE apps ADD COLUMN waiting_reason text;

-- GPUs an instance holds on its node (capacity accounting beside cpu and memory).
ALTER TABLE instances ADD COLUMN gpus integer NOT NULL DEFAULT 0 CHECK (gpus >= 0);

-- The resend timer looks for unacknowledged assigns and pending stops.
CREATE INDEX instances_unacked ON instances (updated_at)
    WHERE state = 'assigned' AND NOT acked;
CREATE INDEX instances_stopping ON instances (updated_at)
    WHERE desired = 'stop' AND state IN ('assigned', 'pulling', 'starting', 'running', 'lost');

-- Set when a node registers with a new boot_id (its agent restarted); the
-- first heartbeat of the new boot clears it, after the instances placed
-- before the restart that the agent no longer lists are marked lost.
ALTER TABLE nodes ADD COLUMN restarted_at timestamptz;
