DROP TABLE IF EXISTS {{schema}}.durable_listened_name;
ALTER TABLE IF EXISTS {{schema}}.durable_event DROP COLUMN IF EXISTS xid;
DROP FUNCTION IF EXISTS {{schema}}.durable_take_wait(bigint, text, jsonb, text);
DROP FUNCTION IF EXISTS {{schema}}.durable_claim_timeout(text, text, text);
DROP INDEX IF EXISTS {{schema}}.durable_event_name_received_idx;
ALTER TABLE IF EXISTS {{schema}}.durable_step DROP COLUMN IF EXISTS child_run_id;
DROP FUNCTION IF EXISTS {{schema}}.durable_end_run(text, text, jsonb, text, text);
DROP FUNCTION IF EXISTS {{schema}}.durable_deliver(text, text, text, jsonb, text, text);
DROP INDEX IF EXISTS {{schema}}.durable_event_unrouted_idx;
ALTER TABLE IF EXISTS {{schema}}.durable_event DROP COLUMN IF EXISTS routed;
ALTER TABLE IF EXISTS {{schema}}.durable_function DROP COLUMN IF EXISTS config;
DROP TABLE IF EXISTS {{schema}}.durable_cron_tick;
DROP TABLE IF EXISTS {{schema}}.durable_idempotency;
DROP TABLE IF EXISTS {{schema}}.durable_wait;
DROP INDEX IF EXISTS {{schema}}.durable_run_finish_deadline_idx;
DROP INDEX IF EXISTS {{schema}}.durable_run_start_deadline_idx;
DROP INDEX IF EXISTS {{schema}}.durable_run_parent_idx;
ALTER TABLE IF EXISTS {{schema}}.durable_run
    DROP COLUMN IF EXISTS epoch,
    DROP COLUMN IF EXISTS parent_run_id,
    DROP COLUMN IF EXISTS parent_step,
    DROP COLUMN IF EXISTS start_deadline,
    DROP COLUMN IF EXISTS finish_timeout,
    DROP COLUMN IF EXISTS finish_deadline;
