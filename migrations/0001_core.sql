-- Core schema: tenancy, keys, workloads, runs, instances, nodes, scheduler lease.
-- loom-admin migrate applies each file once, in a transaction, and records it
-- in loom_migrations with its sha256.

CREATE TABLE projects (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$'),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Keys are "loom_<key_id>_<secret>"; only sha256(secret) is stored.
CREATE TABLE api_keys (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id         text NOT NULL UNIQUE,
    secret_sha256  bytea NOT NULL CHECK (length(secret_sha256) = 32),
    project_id     bigint REFERENCES projects (id) ON DELETE CASCADE,
    role           text NOT NULL CHECK (role IN ('admin', 'read', 'write')),
    description    text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    CHECK ((role = 'admin') = (project_id IS NULL))
);

-- An app's whole user-facing spec is kept as JSON (Code Engine field names);
-- the columns are what the scheduler and activator query on.
CREATE TABLE apps (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id          bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name                text NOT NULL,
    generation          integer NOT NULL DEFAULT 1,
    spec                jsonb NOT NULL,
    min_instances       integer NOT NULL DEFAULT 0 CHECK (min_instances >= 0),
    max_instances       integer NOT NULL DEFAULT 10 CHECK (max_instances >= 0),
    -- last autoscaler decision, clamped to [min, max] when used
    desired_instances   integer NOT NULL DEFAULT 0 CHECK (desired_instances >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE app_revisions (
    app_id      bigint NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    generation  integer NOT NULL,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app_id, generation)
);

CREATE TABLE jobs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    spec        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

-- A run is one row whatever its array size: the indices still to place are a
-- multirange; a job_run_indices row exists only once an index has started.
CREATE TABLE job_runs (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id             bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name                   text NOT NULL,
    job_id                 bigint REFERENCES jobs (id) ON DELETE SET NULL,
    spec                   jsonb NOT NULL,
    array_spec             text NOT NULL,
    array_size             integer NOT NULL CHECK (array_size > 0),
    pending                int4multirange NOT NULL,
    parallelism            integer NOT NULL DEFAULT 0 CHECK (parallelism >= 0),
    retry_limit            integer NOT NULL DEFAULT 3 CHECK (retry_limit >= 0),
    max_execution_seconds  integer NOT NULL DEFAULT 7200 CHECK (max_execution_seconds >= 0),
    state                  text NOT NULL DEFAULT 'pending'
                           CHECK (state IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    n_running              integer NOT NULL DEFAULT 0,
    n_succeeded            integer NOT NULL DEFAULT 0,
    n_failed               integer NOT NULL DEFAULT 0,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    finished_at            timestamptz,
    UNIQUE (project_id, name)
);
CREATE INDEX job_runs_active ON job_runs (id) WHERE state IN ('pending', 'running');

CREATE TABLE job_run_indices (
    run_id       bigint NOT NULL REFERENCES job_runs (id) ON DELETE CASCADE,
    idx          integer NOT NULL CHECK (idx >= 0),
    state        text NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    retries      integer NOT NULL DEFAULT 0,
    instance_id  uuid,
    started_at   timestamptz,
    finished_at  timestamptz,
    exit_code    integer,
    reason       text,
    PRIMARY KEY (run_id, idx)
);

CREATE TABLE nodes (
    name            text PRIMARY KEY,
    address         text NOT NULL,
    boot_id         text NOT NULL,
    cpu_millis      bigint NOT NULL CHECK (cpu_millis >= 0),
    memory_bytes    bigint NOT NULL CHECK (memory_bytes >= 0),
    disk_bytes      bigint NOT NULL DEFAULT 0,
    labels          jsonb NOT NULL DEFAULT '{}',
    gpus            jsonb NOT NULL DEFAULT '[]',
    subnet          text NOT NULL DEFAULT '',
    simulated       boolean NOT NULL DEFAULT false,
    state           text NOT NULL DEFAULT 'ready'
                    CHECK (state IN ('ready', 'cordoned', 'draining', 'lost')),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    registered_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per instance placed. The row is committed before the agent is told.
CREATE TABLE instances (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id     bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    kind           text NOT NULL CHECK (kind IN ('job', 'app')),
    app_id         bigint REFERENCES apps (id) ON DELETE CASCADE,
    app_generation integer,
    job_run_id     bigint REFERENCES job_runs (id) ON DELETE CASCADE,
    array_index    integer,
    retry          integer NOT NULL DEFAULT 0,
    node_name      text NOT NULL REFERENCES nodes (name),
    epoch          bigint NOT NULL,
    cpu_millis     bigint NOT NULL,
    memory_bytes   bigint NOT NULL,
    state          text NOT NULL DEFAULT 'assigned'
                   CHECK (state IN ('assigned', 'pulling', 'starting', 'running',
                                    'succeeded', 'failed', 'stopped', 'lost')),
    -- 'stop' once the scheduler wants it gone; the agent is told until it stops
    desired        text NOT NULL DEFAULT 'run' CHECK (desired IN ('run', 'stop')),
    acked          boolean NOT NULL DEFAULT false,
    report_seq     bigint NOT NULL DEFAULT 0,
    address        text,
    exit_code      integer,
    reason         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'job') = (job_run_id IS NOT NULL)),
    CHECK ((kind = 'app') = (app_id IS NOT NULL))
);
CREATE INDEX instances_live ON instances (node_name)
    WHERE state IN ('assigned', 'pulling', 'starting', 'running');
CREATE INDEX instances_app ON instances (app_id) WHERE app_id IS NOT NULL;
CREATE INDEX instances_run ON instances (job_run_id, array_index) WHERE job_run_id IS NOT NULL;

-- Leader election: one row per elected role; the epoch is the fencing token.
CREATE TABLE leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    epoch       bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Container output, shipped by the logshipper. (instance, offset) makes a
-- resend harmless.
CREATE TABLE log_lines (
    instance_id  uuid NOT NULL,
    "offset"     bigint NOT NULL,
    ts           timestamptz NOT NULL,
    stream       text NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    line         text NOT NULL,
    PRIMARY KEY (instance_id, "offset")
);
