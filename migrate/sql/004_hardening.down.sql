ALTER TABLE IF EXISTS {{schema}}.durable_run DROP COLUMN IF EXISTS log_lines;

CREATE OR REPLACE FUNCTION {{schema}}.durable_end_run(p_run_id text, p_status text, p_output jsonb, p_error text, p_channel text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    data jsonb;
    n integer;
BEGIN
    SELECT function_id, events, parent_run_id, parent_step INTO r
    FROM {{schema}}.durable_run WHERE id = p_run_id;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    data := jsonb_build_object('function_id', r.function_id, 'run_id', p_run_id, 'event', r.events -> 0);
    IF p_status = 'completed' THEN
        data := data || jsonb_build_object('result', coalesce(p_output, 'null'::jsonb));
    ELSE
        data := data || jsonb_build_object('error', coalesce(p_error, p_status));
    END IF;
    -- An event is stored (and routed right after, by any live process) only
    -- when something listens to it: a trigger, a wait or cancellation
    -- listener, or a name some WaitForEvent ever waited on (a wait being
    -- registered may need the event; the shared lock orders this check
    -- with the waiter's exclusive one, see durable_listened_name).
    PERFORM pg_advisory_xact_lock_shared(hashtext(split_part(p_channel, '.', 1) || ':durable/function.' || e.suffix))
    FROM unnest(CASE p_status
        WHEN 'completed' THEN ARRAY['finished']
        WHEN 'failed' THEN ARRAY['failed', 'finished']
        ELSE ARRAY['cancelled'] END) AS e(suffix)
    ORDER BY e.suffix;
    INSERT INTO {{schema}}.durable_event (id, name, data, ts, routed)
    SELECT p_run_id || '/' || e.suffix, 'durable/function.' || e.suffix, data, now(), false
    FROM unnest(CASE p_status
        WHEN 'completed' THEN ARRAY['finished']
        WHEN 'failed' THEN ARRAY['failed', 'finished']
        ELSE ARRAY['cancelled'] END) AS e(suffix)
    WHERE EXISTS (SELECT 1 FROM {{schema}}.durable_function_trigger t WHERE t.event_name = 'durable/function.' || e.suffix)
       OR EXISTS (SELECT 1 FROM {{schema}}.durable_wait w WHERE w.event_name = 'durable/function.' || e.suffix)
       OR EXISTS (SELECT 1 FROM {{schema}}.durable_listened_name l WHERE l.name = 'durable/function.' || e.suffix)
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;

    IF r.parent_run_id IS NOT NULL THEN
        IF p_status = 'completed' THEN
            PERFORM {{schema}}.durable_deliver(r.parent_run_id, r.parent_step, 'completed',
                coalesce(p_output, 'null'::jsonb), NULL, p_channel);
        ELSE
            PERFORM {{schema}}.durable_deliver(r.parent_run_id, r.parent_step, 'failed', NULL,
                'invoked run ' || p_run_id || ' ' || p_status || coalesce(': ' || p_error, ''), p_channel);
        END IF;
    END IF;

    DELETE FROM {{schema}}.durable_wait WHERE run_id = p_run_id;
    RETURN n;
END;
$$;
