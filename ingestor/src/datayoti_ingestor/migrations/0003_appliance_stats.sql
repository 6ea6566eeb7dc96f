-- What the dashboards and alerts need to know about the appliance itself, one row
-- every [stats] interval_s from the ingestor: its counters over the interval, its backlog, and the
-- storage under PostgreSQL (database size, free disk, bytes written to the card).
CREATE TABLE appliance_stats (
    time               timestamptz NOT NULL,  -- end of the interval
    interval_s         double precision NOT NULL,
    received           bigint NOT NULL,  -- messages taken from the broker
    stored             bigint NOT NULL,  -- rows committed: readings, heartbeats, statuses
    rejected           bigint NOT NULL,  -- put in rejected_messages, database_refused included
    database_refused   bigint NOT NULL,  -- of which the database refused
    duplicates         bigint NOT NULL,
    backlog            integer NOT NULL,  -- received and not committed yet, at `time`
    database_bytes     bigint,
    disk_free_bytes    bigint,  -- the filesystem of PostgreSQL's data
    disk_total_bytes   bigint,
    card_written_bytes bigint   -- written to that block device in the interval; NULL when unknown
);
SELECT create_hypertable('appliance_stats', by_range('time', INTERVAL '7 days'));

-- The sensor model decides which alert thresholds apply: 'ESP32-DHT11' or
-- 'ESP32-DHT22'; the original default 'ESP32-DHT' counts as a DHT22.
COMMENT ON COLUMN devices.device_type IS 'ESP32-DHT11 or ESP32-DHT22 (ESP32-DHT: a DHT22)';
