-- The spec's integers, normalised by the API beside the JSON (common/spec.c
-- names them in its field table), so that the scheduler and the activator
-- read integers instead of parsing text in every query.
--
-- Rows written before this migration are filled from their JSON: cpu is in
-- its canonical vCPU form ("0.125"), memory and storage carry one of the
-- units M, G, Mi, Gi, which the API always checked.

CREATE FUNCTION pg_temp.loom_bytes(t text, def bigint) RETURNS bigint LANGUAGE sql AS $$
    SELECT CASE WHEN t IS NULL THEN def ELSE
        round((substring(t FROM '^[0-9.]+'))::numeric *
            CASE substring(t FROM '[A-Za-z]+$')
                WHEN 'M' THEN 1000000 WHEN 'G' THEN 1000000000
                WHEN 'Mi' THEN 1048576 WHEN 'Gi' THEN 1073741824 ELSE 1 END)::bigint END
$$;
CREATE FUNCTION pg_temp.loom_millis(t text) RETURNS bigint LANGUAGE sql AS $$
    SELECT coalesce(round((t)::numeric * 1000)::bigint, 1000)
$$;

ALTER TABLE job_runs
    ADD COLUMN cpu_millis bigint,
    ADD COLUMN memory_bytes bigint,
    ADD COLUMN ephemeral_bytes bigint,
    ADD COLUMN gpus integer,
    ADD COLUMN priority integer;
UPDATE job_runs SET
    cpu_millis = pg_temp.loom_millis(spec->>'scale_cpu_limit'),
    memory_bytes = pg_temp.loom_bytes(spec->>'scale_memory_limit', 4000000000),
    ephemeral_bytes = pg_temp.loom_bytes(spec->>'scale_ephemeral_storage_limit', 400000000),
    gpus = coalesce((spec->>'scale_gpus')::integer, 0),
    priority = coalesce((spec->>'priority')::integer, 50);
ALTER TABLE job_runs
    ALTER COLUMN cpu_millis SET NOT NULL,
    ALTER COLUMN memory_bytes SET NOT NULL,
    ALTER COLUMN ephemeral_bytes SET NOT NULL,
    ALTER COLUMN gpus SET NOT NULL,
    ALTER COLUMN priority SET NOT NULL,
    ADD CHECK (cpu_millis > 0 AND memory_bytes > 0 AND ephemeral_bytes > 0 AND gpus >= 0);

-- The runs the placer takes first: priority, then age.
CREATE INDEX job_runs_placing ON job_runs (priority DESC, id)
    WHERE state IN ('pending', 'running');

-- apps hold the current generation's values, app_revisions each generation's.
ALTER TABLE apps
    ADD COLUMN cpu_millis bigint,
    ADD COLUMN memory_bytes bigint,
    ADD COLUMN ephemeral_bytes bigint,
    ADD COLUMN gpus integer,
    ADD COLUMN port integer,
    ADD COLUMN concurrency integer,
    ADD COLUMN target integer;
ALTER TABLE app_revisions
    ADD COLUMN cpu_millis bigint,
    ADD COLUMN memory_bytes bigint,
    ADD COLUMN ephemeral_bytes bigint,
    ADD COLUMN gpus integer,
    ADD COLUMN port integer,
    ADD COLUMN min_instances integer,
    ADD COLUMN max_instances integer,
    ADD COLUMN concurrency integer,
    ADD COLUMN target integer;
UPDATE apps SET
    cpu_millis = pg_temp.loom_millis(spec->>'scale_cpu_limit'),
    memory_bytes = pg_temp.loom_bytes(spec->>'scale_memory_limit', 4000000000),
    ephemeral_bytes = pg_temp.loom_bytes(spec->>'scale_ephemeral_storage_limit', 400000000),
    gpus = coalesce((spec->>'scale_gpus')::integer, 0),
    port = coalesce((spec->>'image_port')::integer, 8080),
    concurrency = coalesce((spec->>'scale_concurrency')::integer, 100),
    target = coalesce((spec->>'scale_concurrency_target')::integer,
                      (spec->>'scale_concurrency')::integer, 100);
UPDATE app_revisions SET
    cpu_millis = pg_temp.loom_millis(spec->>'scale_cpu_limit'),
    memory_bytes = pg_temp.loom_bytes(spec->>'scale_memory_limit', 4000000000),
    ephemeral_bytes = pg_temp.loom_bytes(spec->>'scale_ephemeral_storage_limit', 400000000),
    gpus = coalesce((spec->>'scale_gpus')::integer, 0),
    port = coalesce((spec->>'image_port')::integer, 8080),
    min_instances = coalesce((spec->>'scale_min_instances')::integer, 0),
    max_instances = coalesce((spec->>'scale_max_instances')::integer, 10),
    concurrency = coalesce((spec->>'scale_concurrency')::integer, 100),
    target = coalesce((spec->>'scale_concurrency_target')::integer,
                      (spec->>'scale_concurrency')::integer, 100);
ALTER TABLE apps
    ALTER COLUMN cpu_millis SET NOT NULL,
    ALTER COLUMN memory_bytes SET NOT NULL,
    ALTER COLUMN ephemeral_bytes SET NOT NULL,
    ALTER COLUMN gpus SET NOT NULL,
    ALTER COLUMN port SET NOT NULL,
    ALTER COLUMN concurrency SET NOT NULL,
    ALTER COLUMN target SET NOT NULL;
ALTER TABLE app_revisions
    ALTER COLUMN cpu_millis SET NOT NULL,
    ALTER COLUMN memory_bytes SET NOT NULL,
    ALTER COLUMN ephemeral_bytes SET NOT NULL,
    ALTER COLUMN gpus SET NOT NULL,
    ALTER COLUMN port SET NOT NULL,
    ALTER COLUMN min_instances SET NOT NULL,
    ALTER COLUMN max_instances SET NOT NULL,
    ALTER COLUMN concurrency SET NOT NULL,
    ALTER COLUMN target SET NOT NULL;
