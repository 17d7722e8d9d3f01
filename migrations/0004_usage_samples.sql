-- Usage samples as the agents measured them, written by loom-metering.
-- (instance_id, seq) is the sample's identity: a redelivered or resent sample
-- is a no-op (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE usage_samples (
    instance_id         uuid NOT NULL,
    seq                 bigint NOT NULL,
    -- NULL when neither the instance nor the project is known any more
    project_id          bigint,
    project             text NOT NULL,
    node                text NOT NULL,
    ts                  timestamptz NOT NULL,
    interval_ms         bigint NOT NULL DEFAULT 0,
    cpu_usage_ns        bigint NOT NULL CHECK (cpu_usage_ns >= 0),
    memory_bytes        bigint NOT NULL CHECK (memory_bytes >= 0),
    memory_peak_bytes   bigint NOT NULL CHECK (memory_peak_bytes >= 0),
    cpu_millis_alloc    bigint NOT NULL,
    memory_bytes_alloc  bigint NOT NULL,
    gpus                integer NOT NULL DEFAULT 0,
    received_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, seq)
);
CREATE INDEX usage_samples_project_ts ON usage_samples (project_id, ts);

-- The logshipper's retention deletes by age.
CREATE INDEX log_lines_ts ON log_lines (ts);
