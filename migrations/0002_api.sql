-- What the public API needs beyond the core schema: idempotent POSTs, an
-- outbox for events, secrets, config maps, and a generation (entity tag) on
-- jobs.

-- A job's generation is its entity tag: PATCH with If-Match compares it.
ALTER TABLE jobs ADD COLUMN generation integer NOT NULL DEFAULT 1;

-- Idempotency-Key: one row per (caller key, client key). status is NULL while
-- the first request is still being handled; then the reply is kept so that a
-- retry gets the same answer. Rows expire after a day.
CREATE TABLE idempotency_keys (
    key_id        text NOT NULL,
    idem_key      text NOT NULL,
    fingerprint   text NOT NULL,  -- sha256 of method, path and body
    status        integer,
    content_type  text,
    response      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Transactional outbox: a change and its event commit together; an API
-- replica publishes unpublished rows (CloudEvents JSON) on subject.
CREATE TABLE outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject       text NOT NULL,
    event         jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Secrets: data is AES-256-GCM ciphertext of the JSON object of key/values,
-- stored as nonce (12) || ciphertext || tag (16), with the project id and
-- name as additional data so that a row cannot be moved to another name.
CREATE TABLE secrets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    format      text NOT NULL DEFAULT 'generic' CHECK (format IN ('generic', 'registry')),
    data_keys   text[] NOT NULL DEFAULT '{}',
    data_enc    bytea NOT NULL,
    key_version integer NOT NULL DEFAULT 1,
    generation  integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);

CREATE TABLE config_maps (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    data        jsonb NOT NULL,
    generation  integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);
