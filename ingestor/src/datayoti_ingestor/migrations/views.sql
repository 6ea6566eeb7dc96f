-- The original stack's views, by name and columns. `datayoti-ingestor views
-- create|recreate|drop` manages them; `migrate` (re)creates them last.

CREATE OR REPLACE VIEW sensor_data_semi_hourly AS
SELECT device_id,
       bucket_start,
       bucket_start + INTERVAL '30 minutes'       AS bucket_end,
       sum_temperature / measurement_count        AS avg_temperature,
       min_temperature,
       max_temperature,
       sum_humidity / measurement_count           AS avg_humidity,
       min_humidity,
       max_humidity,
       measurement_count
FROM rollup_semi_hourly;

CREATE OR REPLACE VIEW sensor_data_hourly AS
SELECT device_id,
       bucket_start,
       bucket_start + INTERVAL '1 hour'           AS bucket_end,
       sum_temperature / measurement_count        AS avg_temperature,
       min_temperature,
       max_temperature,
       sum_humidity / measurement_count           AS avg_humidity,
       min_humidity,
       max_humidity,
       measurement_count
FROM rollup_hourly;

-- Folded days from rollup_daily, the days after them summed from rollup_hourly.
CREATE OR REPLACE VIEW sensor_data_daily AS
SELECT device_id,
       bucket_start,
       bucket_start + INTERVAL '1 day'            AS bucket_end,
       sum_temperature / measurement_count        AS avg_temperature,
       min_temperature,
       max_temperature,
       sum_humidity / measurement_count           AS avg_humidity,
       min_humidity,
       max_humidity,
       measurement_count
FROM (
    SELECT * FROM rollup_daily
    UNION ALL
    SELECT device_id, time_bucket(INTERVAL '1 day', bucket_start), sum(measurement_count),
           sum(sum_temperature), min(min_temperature), max(max_temperature),
           sum(sum_humidity), min(min_humidity), max(max_humidity)
    FROM rollup_hourly
    WHERE bucket_start >= rollup_daily_folded_until()
    GROUP BY 1, 2
) r;

-- One index probe per device, not a scan of the hypertable.
CREATE OR REPLACE VIEW latest_sensor_readings AS
SELECT d.device_id, s.time, s.temperature, s.humidity, s.reception_time
FROM devices d
CROSS JOIN LATERAL (
    SELECT time, temperature, humidity, reception_time
    FROM sensor_data
    WHERE sensor_data.device_id = d.device_id
    ORDER BY time DESC
    LIMIT 1
) s;

-- online: data or a heartbeat within online_within; warning: within warning_within; else offline.
CREATE OR REPLACE VIEW device_health AS
SELECT d.device_id,
       d.site_id,
       d.last_heartbeat_at AS last_heartbeat,
       h.rssi,
       h.free_heap,
       h.uptime,
       h.min_heap,
       h.ntp_sync,
       CASE
           WHEN greatest(d.last_heartbeat_at, d.last_data_at) > now() - t.online_within THEN 'online'
           WHEN greatest(d.last_heartbeat_at, d.last_data_at) > now() - t.warning_within THEN 'warning'
           ELSE 'offline'
       END AS health_status
FROM devices d
CROSS JOIN health_thresholds t
LEFT JOIN LATERAL (
    SELECT rssi, free_heap, uptime, min_heap, ntp_sync
    FROM device_heartbeats
    WHERE device_heartbeats.device_id = d.device_id
    ORDER BY time DESC
    LIMIT 1
) h ON true;
