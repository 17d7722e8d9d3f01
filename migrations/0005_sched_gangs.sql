-- Per-index retry backoff: an index that failed and may retry waits in state
-- 'pending' with retry_at set, outside job_runs.pending; the leader moves it
-- back into pending once retry_at has passed.
ALTER TABLE job_run_indices ADD COLUMN retry_at timestamptz;
CREATE INDEX job_run_indices_backoff ON job_run_indices (retry_at) WHERE retry_at IS NOT NULL;

-- Gangs (a job run with scale_nodes = N > 1): each index runs as N instances
-- placed together on N distinct nodes, all or none. rank 0..N-1; gang is the
-- id of the rank-0 instance (the one job_run_indices.instance_id names).
ALTER TABLE instances ADD COLUMN rank integer CHECK (rank >= 0);
ALTER TABLE instances ADD COLUMN gang uuid;
CREATE INDEX instances_gang ON instances (gang) WHERE gang IS NOT NULL;

-- Project quotas, enforced when the scheduler places job indices: what the
-- project's live instances hold may not exceed them. NULL: no limit.
-- Set with `loom-admin quota set`.
CREATE TABLE project_quotas (
    project_id    bigint PRIMARY KEY REFERENCES projects (id) ON DELETE CASCADE,
    cpu_millis    bigint CHECK (cpu_millis >= 0),
    memory_bytes  bigint CHECK (memory_bytes >= 0),
    gpus          integer CHECK (gpus >= 0),
    instances     integer CHECK (instances >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
