-- A daily rollup, so that a year of many sensors stays fast on a Pi (the dashboards'
-- year-long panels). It costs the ingestor nothing: the daily timer (`retention`) and
-- `migrate` recompute the hourly rollup's complete days into it (late readings then
-- count); sensor_data_daily adds the days not folded yet from rollup_hourly.
CREATE TABLE rollup_daily (LIKE rollup_semi_hourly INCLUDING ALL);

-- Where the folded days end. A STABLE function, not a subquery: the planner reads its
-- value, so the view's hourly branch is an index scan of the few days after it.
CREATE FUNCTION rollup_daily_folded_until() RETURNS timestamptz
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(max(bucket_start) + INTERVAL '1 day', '-infinity') FROM rollup_daily $$;
