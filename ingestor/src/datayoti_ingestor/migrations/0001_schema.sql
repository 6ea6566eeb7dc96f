-- The original stack's tables, with the same names and columns, plus what a
-- lossless ingestor needs: natural keys, the device's own clock when it was not
-- believed, extra numeric fields, and a dead letter table.
-- Runs as the owner role; the timescaledb extension is created by the
-- timescaledb Ansible role (it needs a superuser).

CREATE TABLE sites (
    site_id     text PRIMARY KEY,
    site_name   text,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    device_id         text PRIMARY KEY,
    site_id           text REFERENCES sites (site_id),
    device_name       text,
    device_type       text NOT NULL DEFAULT 'ESP32-DHT',
    is_active         boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- Kept up to date by the ingestor, so device_health needs no scan.
    last_data_at      timestamptz,
    last_heartbeat_at timestamptz
);

CREATE TABLE sensor_data (
    time           timestamptz NOT NULL,
    device_id      text NOT NULL,
    site_id        text,
    temperature    double precision,
    humidity       double precision,
    reception_time timestamptz NOT NULL DEFAULT now(),
    -- The device's timestamp when it was absurd (no NTP yet, far future): `time` is then the receipt.
    device_time    timestamptz,
    -- Numeric fields beyond temperature and humidity, e.g. {"pressure": 1013.2}.
    extra          jsonb,
    CONSTRAINT sensor_data_device_time_key UNIQUE (device_id, time)
);
SELECT create_hypertable('sensor_data', by_range('time', INTERVAL '1 day'));
CREATE INDEX sensor_data_site_time_idx ON sensor_data (site_id, time DESC);
-- Finds a redelivered reading whose device clock was not believed.
CREATE INDEX sensor_data_device_clock_idx ON sensor_data (device_id, device_time) WHERE device_time IS NOT NULL;

CREATE TABLE device_heartbeats (
    time           timestamptz NOT NULL,
    device_id      text NOT NULL,
    site_id        text,
    status         text NOT NULL DEFAULT 'online',
    rssi           integer,
    free_heap      integer,
    uptime         bigint,
    min_heap       integer,
    ntp_sync       boolean,
    reception_time timestamptz NOT NULL DEFAULT now(),
    device_time    timestamptz,
    extra          jsonb,
    CONSTRAINT device_heartbeats_device_time_key UNIQUE (device_id, time)
);
SELECT create_hypertable('device_heartbeats', by_range('time', INTERVAL '7 days'));
CREATE INDEX device_heartbeats_device_clock_idx ON device_heartbeats (device_id, device_time)
    WHERE device_time IS NOT NULL;

CREATE TABLE device_status (
    time           timestamptz NOT NULL,
    device_id      text NOT NULL,
    site_id        text,
    status_type    text NOT NULL,
    status_data    jsonb,
    reception_time timestamptz NOT NULL DEFAULT now(),
    -- A retained status comes again on every resubscription: stored once.
    CONSTRAINT device_status_device_time_key UNIQUE (device_id, time, status_type)
);
SELECT create_hypertable('device_status', by_range('time', INTERVAL '30 days'));

CREATE TABLE rejected_messages (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at   timestamptz NOT NULL DEFAULT now(),
    topic         text NOT NULL,
    -- The first bytes of the payload (bounded by rules.rejected_payload_bytes).
    payload       bytea NOT NULL,
    payload_bytes integer NOT NULL,
    reason        text NOT NULL,
    detail        text NOT NULL
);
CREATE INDEX rejected_messages_received_idx ON rejected_messages (received_at);

-- Rollup state, maintained incrementally by the ingestor in the transaction that
-- inserts the raw rows (Debian's TimescaleDB has no continuous aggregates).
-- Sums, not averages, so that late readings fold in exactly.
CREATE TABLE rollup_semi_hourly (
    device_id         text NOT NULL,
    bucket_start      timestamptz NOT NULL,
    measurement_count bigint NOT NULL,
    sum_temperature   double precision NOT NULL,
    min_temperature   double precision NOT NULL,
    max_temperature   double precision NOT NULL,
    sum_humidity      double precision NOT NULL,
    min_humidity      double precision NOT NULL,
    max_humidity      double precision NOT NULL,
    PRIMARY KEY (device_id, bucket_start)
);
CREATE INDEX rollup_semi_hourly_bucket_idx ON rollup_semi_hourly (bucket_start);

CREATE TABLE rollup_hourly (LIKE rollup_semi_hourly INCLUDING ALL);

-- Thresholds of device_health, synchronised from the ingestor's configuration.
CREATE TABLE health_thresholds (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    online_within   interval NOT NULL DEFAULT INTERVAL '5 minutes',
    warning_within  interval NOT NULL DEFAULT INTERVAL '30 minutes'
);
INSERT INTO health_thresholds DEFAULT VALUES;
