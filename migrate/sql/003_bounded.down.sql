DROP INDEX IF EXISTS {{schema}}.durable_river_job_scheduled_idx;
