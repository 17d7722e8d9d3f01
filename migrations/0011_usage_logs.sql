-- Usage and logs, end to end.
--
-- Usage: each agent sample covers an interval (start_ts, ts] of one instance
-- and carries the cpu time used in it (cpu_ns, the difference of the
-- cgroup's counter): every sample reaching PostgreSQL once makes the sum of
-- the samples equal the counter. loom-metering aggregates samples, request
-- counts and function activations into hourly rows (usage_records), rates
-- them with the price sheet in effect, closes each hour a while after its
-- end (closed rows never change: late usage gets a correction row of its
-- own), and turns closed rows into CloudEvents for a billing endpoint.
--
-- Logs: the logshipper's cursor per instance (log_streams) moves in the
-- transaction that stores the lines, and says when an instance's stream
-- has ended; retention per project by age and size (log_retention).

-- ---- samples ---------------------------------------------------------------------

ALTER TABLE usage_samples
    -- the interval this sample covers ends at ts
    ADD COLUMN start_ts timestamptz,
    -- cpu time used in the interval (cpu_usage_ns is the cumulative counter)
    ADD COLUMN cpu_ns bigint NOT NULL DEFAULT 0 CHECK (cpu_ns >= 0),
    -- the instance's last sample, from its exit
    ADD COLUMN final boolean NOT NULL DEFAULT false,
    ADD COLUMN kind text NOT NULL DEFAULT 'job' CHECK (kind IN ('app', 'job', 'function', 'build')),
    -- app, job run or function name; app or function generation
    ADD COLUMN resource text NOT NULL DEFAULT '',
    ADD COLUMN revision text NOT NULL DEFAULT '',
    ADD COLUMN gpu_model text NOT NULL DEFAULT '',
    ADD COLUMN ephemeral_bytes_alloc bigint NOT NULL DEFAULT 0 CHECK (ephemeral_bytes_alloc >= 0),
    ADD COLUMN aggregated boolean NOT NULL DEFAULT false;
-- samples stored before intervals existed cannot be priced exactly
UPDATE usage_samples SET aggregated = true;
CREATE INDEX usage_samples_pending ON usage_samples (ts) WHERE NOT aggregated;

-- Requests the activators answered, per app, flushed every second or so.
CREATE TABLE usage_requests (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts          timestamptz NOT NULL,
    project_id  bigint NOT NULL,
    project     text NOT NULL,
    app         text NOT NULL,
    revision    text NOT NULL DEFAULT '',
    requests    bigint NOT NULL CHECK (requests > 0),
    aggregated  boolean NOT NULL DEFAULT false
);
CREATE INDEX usage_requests_pending ON usage_requests (ts) WHERE NOT aggregated;

-- Function activations are counted once each.
ALTER TABLE function_activations ADD COLUMN metered boolean NOT NULL DEFAULT false;
CREATE INDEX function_activations_unmetered ON function_activations (started_at) WHERE NOT metered;

-- ---- metrics, prices ------------------------------------------------------------------

-- What is measured. additive: rows sum (every metric here is).
CREATE TABLE usage_metrics (
    name          text PRIMARY KEY,
    unit          text NOT NULL,           -- FOCUS PricingUnit / ConsumedUnit
    kinds         text[] NOT NULL,         -- the resource kinds that produce it
    description   text NOT NULL
);
INSERT INTO usage_metrics (name, unit, kinds, description) VALUES
    ('vcpu_seconds_allocated', 'vCPU-Seconds', '{app,job}', 'vCPUs reserved for an instance, times seconds'),
    ('vcpu_seconds_used', 'vCPU-Seconds', '{app,job}', 'cpu time used, from the cgroup''s counter'),
    ('memory_gb_seconds', 'GB-Seconds', '{app,job}', 'memory reserved for an instance (10^9 bytes), times seconds'),
    ('gpu_seconds', 'GPU-Seconds', '{app,job}', 'GPUs held by an instance, times seconds; SKU: the GPU model'),
    ('ephemeral_gb_seconds', 'GB-Seconds', '{app,job}', 'ephemeral storage reserved (10^9 bytes), times seconds'),
    ('requests', 'Requests', '{app}', 'requests the activator answered for an app'),
    ('function_invocations', 'Invocations', '{function}', 'function activations'),
    ('function_gb_seconds', 'GB-Seconds', '{function}', 'billed duration of activations times their memory (10^9 bytes)'),
    ('build_seconds', 'Seconds', '{build}', 'build time; SKU: the build size');

-- A price sheet is in effect from its hour until the next one's; the newest
-- whose effective_from is at or before an hour rates that hour.
CREATE TABLE price_sheets (
    version         integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    effective_from  timestamptz NOT NULL UNIQUE
                    CHECK (extract(epoch FROM effective_from) % 3600 = 0),
    currency        text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description     text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE prices (
    version         integer NOT NULL REFERENCES price_sheets (version) ON DELETE CASCADE,
    metric          text NOT NULL REFERENCES usage_metrics (name),
    sku             text NOT NULL DEFAULT '',      -- '' prices every SKU of the metric
    unit_price      numeric NOT NULL CHECK (unit_price >= 0),
    -- a quantity free of charge per project and calendar month (UTC)
    free_per_month  numeric NOT NULL DEFAULT 0 CHECK (free_per_month >= 0),
    PRIMARY KEY (version, metric, sku)
);

-- ---- hourly records ---------------------------------------------------------------

-- One aggregation pass at a time (an advisory lock) takes a number; rows it
-- closes or creates as corrections carry it.
CREATE SEQUENCE usage_pass_seq;

-- Hours are closed in order; an hour is closed once it has a row here.
CREATE TABLE usage_hours (
    hour       timestamptz PRIMARY KEY,
    pass       bigint NOT NULL,
    closed_at  timestamptz NOT NULL DEFAULT now()
);

-- Billing records survive their project (no foreign key): project keeps the name.
CREATE TABLE usage_records (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hour           timestamptz NOT NULL CHECK (extract(epoch FROM hour) % 3600 = 0),
    project_id     bigint NOT NULL,
    project        text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('app', 'job', 'function', 'build')),
    resource       text NOT NULL,
    revision       text NOT NULL DEFAULT '',
    metric         text NOT NULL REFERENCES usage_metrics (name),
    sku            text NOT NULL DEFAULT '',
    quantity       numeric NOT NULL CHECK (quantity >= 0),
    sources        bigint NOT NULL,               -- samples, request rows or activations counted
    -- 0: the hour's own row; else the pass that found usage after the hour closed
    correction     bigint NOT NULL DEFAULT 0,
    closed_pass    bigint,                        -- final from that pass on
    price_version  integer,
    currency       text NOT NULL DEFAULT 'USD',
    unit_price     numeric NOT NULL DEFAULT 0,
    free_quantity  numeric NOT NULL DEFAULT 0,
    list_cost      numeric NOT NULL DEFAULT 0,
    billed_cost    numeric NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (hour, project_id, kind, resource, revision, metric, sku, correction)
);
CREATE INDEX usage_records_project_hour ON usage_records (project_id, hour);
-- the export's order and keyset
CREATE INDEX usage_records_hour_id ON usage_records (hour, id);
CREATE INDEX usage_records_open ON usage_records (hour) WHERE closed_pass IS NULL;
CREATE INDEX usage_records_closed_pass ON usage_records (closed_pass);

-- Rates rows (in id order, so that a free tier goes to the first rated):
-- the sheet in effect at the row's hour, its price for the metric and SKU
-- (an exact SKU before ''), and what is left of the price's monthly free
-- quantity for the project after every other row of that month.
CREATE FUNCTION usage_rate(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r      record;
    sheet  record;
    p      record;
    used   numeric;
    free   numeric;
BEGIN
    FOR r IN SELECT * FROM usage_records WHERE id = ANY (ids) ORDER BY id LOOP
        SELECT version, currency INTO sheet FROM price_sheets
            WHERE effective_from <= r.hour ORDER BY effective_from DESC LIMIT 1;
        IF NOT FOUND THEN
            UPDATE usage_records SET price_version = NULL, unit_price = 0, free_quantity = 0,
                list_cost = 0, billed_cost = 0, updated_at = now() WHERE id = r.id;
            CONTINUE;
        END IF;
        SELECT sku, unit_price, free_per_month INTO p FROM prices
            WHERE version = sheet.version AND metric = r.metric AND sku IN (r.sku, '')
            ORDER BY sku = r.sku DESC LIMIT 1;
        IF NOT FOUND THEN
            UPDATE usage_records SET price_version = sheet.version, currency = sheet.currency,
                unit_price = 0, free_quantity = 0, list_cost = 0, billed_cost = 0,
                updated_at = now() WHERE id = r.id;
            CONTINUE;
        END IF;
        free := 0;
        IF p.free_per_month > 0 THEN
            SELECT coalesce(sum(u.free_quantity), 0) INTO used FROM usage_records u
                WHERE u.project_id = r.project_id AND u.metric = r.metric
                  AND (p.sku = '' OR u.sku = r.sku) AND u.id <> r.id
                  AND u.hour >= date_trunc('month', r.hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                  AND u.hour < (date_trunc('month', r.hour AT TIME ZONE 'UTC')
                                + interval '1 month') AT TIME ZONE 'UTC';
            free := least(r.quantity, greatest(0, p.free_per_month - used));
        END IF;
        UPDATE usage_records SET price_version = sheet.version, currency = sheet.currency,
            unit_price = p.unit_price, free_quantity = free,
            list_cost = r.quantity * p.unit_price,
            billed_cost = (r.quantity - free) * p.unit_price, updated_at = now()
            WHERE id = r.id;
    END LOOP;
END
$$;

-- ---- export to billing systems ----------------------------------------------------

-- CloudEvents for closed rows, one per hour, project, metric and SKU (and
-- correction), created when they close; the pusher sends them in seq order.
CREATE TABLE usage_events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    event       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Where each push target is: the last event seq it acknowledged.
CREATE TABLE usage_push_cursor (
    target      text PRIMARY KEY,
    seq         bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- ---- logs ----------------------------------------------------------------------------

ALTER TABLE log_lines ADD COLUMN project_id bigint;
UPDATE log_lines l SET project_id = i.project_id FROM instances i WHERE i.id = l.instance_id;
CREATE INDEX log_lines_project_ts ON log_lines (project_id, ts);

-- One row per instance whose output a logshipper ships, moved in the
-- transaction that stores its lines. Lines are stored at the offset of the
-- CRI record that ends them (a line of several partial records, joined, at
-- its last), so they are stored in increasing offsets: covered_offset is the
-- offset below which every line is stored, resume_offset where a restarted
-- logshipper reads again (before a line whose first parts it has read but
-- not stored). eos_at is set once the instance has exited and everything it
-- wrote is stored.
CREATE TABLE log_streams (
    instance_id     uuid PRIMARY KEY,
    project_id      bigint,
    node            text NOT NULL,
    resume_offset   bigint NOT NULL DEFAULT 0,
    covered_offset  bigint NOT NULL DEFAULT 0,
    lines           bigint NOT NULL DEFAULT 0,
    bytes           bigint NOT NULL DEFAULT 0,    -- of the lines still stored
    eos_at          timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX log_streams_project ON log_streams (project_id);

-- Per project (or, with project_id NULL, for every project without a row of
-- its own): lines older than max_age go, then the oldest while the project
-- holds more than max_bytes of text.
CREATE TABLE log_retention (
    project_id  bigint UNIQUE REFERENCES projects (id) ON DELETE CASCADE,
    max_age     interval NOT NULL CHECK (max_age > interval '0'),
    max_bytes   bigint CHECK (max_bytes > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX log_retention_default ON log_retention ((project_id IS NULL))
    WHERE project_id IS NULL;
