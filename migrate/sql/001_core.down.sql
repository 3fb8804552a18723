DROP TABLE IF EXISTS {{schema}}.durable_worker;
DROP TABLE IF EXISTS {{schema}}.durable_step;
DROP TABLE IF EXISTS {{schema}}.durable_run;
DROP TABLE IF EXISTS {{schema}}.durable_event;
DROP TABLE IF EXISTS {{schema}}.durable_function_trigger;
DROP TABLE IF EXISTS {{schema}}.durable_function;
