-- Bounded upkeep: indexes that keep the every-second loops' queries to
-- index ranges, however much work waits.

-- The waker (query Wake) reads the scheduled jobs of its queue that are
-- due and the next one due soon. Jobs scheduled far ahead (an Invoke
-- without timeout waits ten years) pile up at the end of this index and
-- are never read. Only scheduled jobs have entries: the hot path's
-- available, running and completed jobs never write to it.
CREATE INDEX durable_river_job_scheduled_idx ON {{schema}}.river_job (queue, scheduled_at)
    WHERE state = 'scheduled';
