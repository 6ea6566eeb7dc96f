-- A daily rollup, so that a year of many sensors stays fast on a Pi (the dashboards'
-- year-long panels). It costs the ingestor nothing: the daily timer (`retention`) and
-- `migrate` recompute the hourly rollup's complete days into it (late readings then
-- count); sensor_data_daily adds the days not folded yet from rollup_hourly.
CREATE TABLE rollup_daily (LIKE rollup_semi_hourly INCLUDING ALL);
