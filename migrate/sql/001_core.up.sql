-- Core tables of pgdurable, in the schema given to migrate.Up.

-- Functions registered by worker processes, so that any process (even one
-- with no functions, such as an API server) can route events to them.
CREATE TABLE {{schema}}.durable_function (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    retries     integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {{schema}}.durable_function_trigger (
    function_id text NOT NULL REFERENCES {{schema}}.durable_function (id) ON DELETE CASCADE,
    idx         integer NOT NULL,
    event_name  text,
    if_expr     text NOT NULL DEFAULT '',
    cron        text NOT NULL DEFAULT '',
    PRIMARY KEY (function_id, idx)
);
CREATE INDEX durable_function_trigger_event_name_idx
    ON {{schema}}.durable_function_trigger (event_name) WHERE event_name IS NOT NULL;

-- Events. The primary key is the user-visible event ID, which makes
-- deduplication a unique-constraint decision.
CREATE TABLE {{schema}}.durable_event (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    data        jsonb NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- One row per run. owner is the fencing token of the job attempt that last
-- wrote the run; every write from an attempt is conditional on it.
CREATE TABLE {{schema}}.durable_run (
    id           text PRIMARY KEY,
    function_id  text NOT NULL,
    status       text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    event_id     text NOT NULL,
    event_ids    text[] NOT NULL,
    events       jsonb NOT NULL,
    job_id       bigint,
    owner        text,
    fn_attempts  integer NOT NULL DEFAULT 0,
    wake_at      timestamptz,
    output       jsonb,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    ended_at     timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX durable_run_event_id_idx ON {{schema}}.durable_run (event_id);
CREATE INDEX durable_run_function_created_idx ON {{schema}}.durable_run (function_id, created_at);

-- Memoized steps, keyed by (run, step key with counter suffix).
CREATE TABLE {{schema}}.durable_step (
    run_id      text NOT NULL REFERENCES {{schema}}.durable_run (id) ON DELETE CASCADE,
    key         text NOT NULL,
    seq         integer NOT NULL,
    kind        text NOT NULL,
    status      text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    output      jsonb,
    error       text,
    wake_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, key)
);

-- Liveness of worker processes. A River job left running by a process whose
-- heartbeat is older than RecoverAfter is handed to another process.
CREATE TABLE {{schema}}.durable_worker (
    id            text PRIMARY KEY,
    hostname      text NOT NULL DEFAULT '',
    pid           integer NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
