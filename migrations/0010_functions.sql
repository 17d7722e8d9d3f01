-- Functions: a few files of code and a runtime, invoked over HTTP. A
-- function row holds the current spec and generation, function_revisions
-- every generation (calls in flight finish on theirs), and the code lives
-- once per content in function_code. Instances of functions are instances
-- rows like any other: a "stem cell" is a running runtime container that no
-- function has claimed yet (function_id NULL, project_id NULL); claiming it
-- sets both, for good.

-- The runtimes an operator installed (loom-admin runtimes register).
CREATE TABLE function_runtimes (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][-a-z0-9.]{0,62}$'),
    language    text NOT NULL,
    image       text NOT NULL,          -- host:port/repo:tag of the runtime image
    is_default  boolean NOT NULL DEFAULT false,
    deprecated  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Code, content-addressed: an identical upload is stored once.
CREATE TABLE function_code (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    is_bundle   boolean NOT NULL,       -- a tar.gz bundle rather than one file
    data        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE functions (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id        bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name              text NOT NULL,
    generation        integer NOT NULL DEFAULT 1,
    spec              jsonb NOT NULL,
    runtime           text NOT NULL REFERENCES function_runtimes (name),
    code_sha256       text NOT NULL REFERENCES function_code (sha256),
    cpu_millis        bigint NOT NULL,
    memory_bytes      bigint NOT NULL,
    concurrency       integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE function_revisions (
    function_id  bigint NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    generation   integer NOT NULL,
    spec         jsonb NOT NULL,
    runtime      text NOT NULL REFERENCES function_runtimes (name),
    code_sha256  text NOT NULL REFERENCES function_code (sha256),
    cpu_millis   bigint NOT NULL,
    memory_bytes bigint NOT NULL,
    concurrency  integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (function_id, generation)
);

ALTER TABLE instances
    ALTER COLUMN project_id DROP NOT NULL,
    ADD COLUMN function_id bigint REFERENCES functions (id) ON DELETE SET NULL,
    ADD COLUMN function_generation integer,
    ADD COLUMN runtime text,
    ADD COLUMN claimed_at timestamptz,
    -- its function's code is loaded (/init answered): any activator may call it
    ADD COLUMN initialized_at timestamptz,
    -- a function instance's stop was sent at once (resends follow the timer)
    ADD COLUMN stop_sent boolean NOT NULL DEFAULT false,
    DROP CONSTRAINT instances_kind_check,
    ADD CONSTRAINT instances_kind_check CHECK (kind IN ('job', 'app', 'function')),
    ADD CONSTRAINT instances_function_check
        CHECK ((kind = 'function') = (runtime IS NOT NULL)),
    -- only a stem cell belongs to no project; a claimed one to its function's
    ADD CONSTRAINT instances_project_check
        CHECK (project_id IS NOT NULL OR (kind = 'function' AND claimed_at IS NULL));
-- The stem cells a claim chooses from.
CREATE INDEX instances_stems ON instances (runtime, node_name)
    WHERE kind = 'function' AND claimed_at IS NULL AND state = 'running' AND desired = 'run';
CREATE INDEX instances_function ON instances (function_id) WHERE function_id IS NOT NULL;

-- One record per call: what ran, where, how long, and how it ended. Kept for
-- a retention period (the activator deletes old ones in small batches).
CREATE TABLE function_activations (
    id                 uuid PRIMARY KEY,
    project_id         bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    function_id        bigint REFERENCES functions (id) ON DELETE SET NULL,
    function_name      text NOT NULL,
    generation         integer NOT NULL,
    instance_id        uuid,
    started_at         timestamptz NOT NULL,
    duration_us        bigint NOT NULL CHECK (duration_us >= 0),
    billed_ms          bigint NOT NULL CHECK (billed_ms >= 0),
    memory_bytes       bigint NOT NULL,
    status             text NOT NULL CHECK (status IN ('success', 'application_error',
                                                       'developer_error', 'timeout',
                                                       'system_error')),
    http_status        integer NOT NULL,
    cold               boolean NOT NULL
);
CREATE INDEX function_activations_function ON function_activations (function_id, started_at DESC);
CREATE INDEX function_activations_started ON function_activations (started_at);

-- Calls waiting for a stem cell, by activator and runtime: the scheduler
-- places stem cells beyond the per-node pools for them when the pools run
-- dry (a burst of cold calls, or pools of size 0). Rows older than a few
-- seconds are stale (an activator that stopped).
CREATE TABLE function_stem_demand (
    activator   text NOT NULL,
    runtime     text NOT NULL,
    waiting     integer NOT NULL CHECK (waiting >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (activator, runtime)
);
