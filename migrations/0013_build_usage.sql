-- Build-seconds for metering: each finished build run is counted once, its
-- time from start to finish, at the hour it finished, per strategy size (SKU).
-- Runs that finished before this migration were never priced: they stay out.
ALTER TABLE build_runs ADD COLUMN metered boolean NOT NULL DEFAULT false;
UPDATE build_runs SET metered = true WHERE finished_at IS NOT NULL;
CREATE INDEX build_runs_unmetered ON build_runs (finished_at)
    WHERE NOT metered AND finished_at IS NOT NULL;
