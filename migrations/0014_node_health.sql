-- Node health: what the node's agent found wrong at its last heartbeat
-- (NULL: healthy), who took the node out of service (an operator, or its
-- health checks), and since when it has been healthy again: a node the
-- health checks drained returns to ready once healthy for a while; one an
-- operator cordoned stays cordoned until an operator says otherwise.
ALTER TABLE nodes ADD COLUMN health_problem text,
    ADD COLUMN cordoned_by text CHECK (cordoned_by IN ('operator', 'health')),
    ADD COLUMN healthy_since timestamptz;
UPDATE nodes SET cordoned_by = 'operator' WHERE state IN ('cordoned', 'draining');
