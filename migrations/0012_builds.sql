-- Builds: source code to an OCI image in the registry.
--
-- A build is a saved configuration (Code Engine's v2 fields, kept as JSON
-- like the other kinds); a build run is one run of it, or a standalone one,
-- with its own copy of the spec. The builder service claims pending runs,
-- holds them with a heartbeat, and records each step; the user code a build
-- runs (npm, pip, go build, buildah) runs as ordinary job runs that belong to
-- the build run, so that it waits in the same queues and quotas as jobs.

CREATE TABLE builds (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    generation  integer NOT NULL DEFAULT 1,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

-- Uploaded sources (tar.gz), stored content-addressed in the registry (the
-- project's repository <project>/loom-sources): a row says that the project
-- uploaded it, so that its builds, and only its builds, may use it.
CREATE TABLE build_sources (
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    digest      text NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    size        bigint NOT NULL CHECK (size > 0),
    files       bigint NOT NULL CHECK (files > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, digest)
);

CREATE TABLE build_runs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id        bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name              text NOT NULL,
    build_id          bigint REFERENCES builds (id) ON DELETE SET NULL,
    spec              jsonb NOT NULL,
    state             text NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    -- a cancel of a running run: the builder that holds it ends it
    cancel_requested  boolean NOT NULL DEFAULT false,
    -- the builder replica that holds a running run, and its last sign of life;
    -- a run whose holder went silent is taken again (attempts + 1) or failed
    builder           text,
    heartbeat_at      timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    -- what detection chose, e.g. "buildpacks: nodejs (npm ci)"
    strategy          text,
    -- the image pushed: its reference and the manifest's digest
    output_image      text,
    output_digest     text CHECK (output_digest ~ '^sha256:[0-9a-f]{64}$'),
    -- [{"name", "status", "started_at", "duration_ms", "detail"}] in order
    steps             jsonb NOT NULL DEFAULT '[]',
    reason            text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);
CREATE INDEX build_runs_active ON build_runs (id) WHERE state IN ('pending', 'running');

-- What the builder itself says about a run (its steps, pushes, failures);
-- the steps' own output is in log_lines, under their instances.
CREATE TABLE build_run_logs (
    build_run_id  bigint NOT NULL REFERENCES build_runs (id) ON DELETE CASCADE,
    seq           integer NOT NULL,
    ts            timestamptz NOT NULL DEFAULT clock_timestamp(),
    line          text NOT NULL,
    PRIMARY KEY (build_run_id, seq)
);

-- Layers made by a build step, by what they were made from (key: sha256 of
-- the stack, the step and its inputs, such as a lock file): a later build
-- with the same inputs takes the layer instead of running the step.
CREATE TABLE build_cache (
    project_id    bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key           text NOT NULL CHECK (key ~ '^[0-9a-f]{64}$'),
    digest        text NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    diff_id       text NOT NULL CHECK (diff_id ~ '^sha256:[0-9a-f]{64}$'),
    size          bigint NOT NULL CHECK (size >= 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, key)
);

-- The stacks builds lay their layers on (loom-admin stack build / register):
-- Debian root filesystems made offline with mmdebstrap, or busybox.
CREATE TABLE build_stacks (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][-a-z0-9.]{0,62}$'),
    image       text NOT NULL,   -- host:port/repo@sha256:<hex>
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A build step is a job run of its build run (hidden from the project's job
-- runs); build_output {"path", "repository"}: the directory of its container
-- that the agent pushes as a layer, and where, once it exits 0.
ALTER TABLE job_runs
    ADD COLUMN build_run_id bigint REFERENCES build_runs (id) ON DELETE CASCADE,
    ADD COLUMN build_output jsonb;
CREATE INDEX job_runs_build ON job_runs (build_run_id) WHERE build_run_id IS NOT NULL;

-- The layer an instance's build_output became: {"digest", "diff_id", "size"}.
ALTER TABLE instances ADD COLUMN output jsonb;
