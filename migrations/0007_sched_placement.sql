-- Ephemeral storage an instance asks for (scale_ephemeral_storage_limit),
-- fitted against nodes.disk_bytes like cpu and memory.
ALTER TABLE instances ADD COLUMN ephemeral_bytes bigint NOT NULL DEFAULT 0
    CHECK (ephemeral_bytes >= 0);

-- Since when a gang run's next index could not be placed all together; past
-- the run's gang_timeout that index fails. NULL while nothing waits.
ALTER TABLE job_runs ADD COLUMN gang_waiting_since timestamptz;
