#!/usr/bin/env python3
"""DataYoti's Grafana dashboards and alert rules, as code.

Writes, with Grafana's own grafana-foundation-sdk (pinned in requirements-dev.txt):
  roles/grafana/files/dashboards/{iot-overview,sensor-metrics,system-health}.json
  roles/grafana/files/alerting/datayoti-alert-rules.yaml

    python roles/grafana/src/datayoti_dashboards.py           # regenerate (`make dashboards`)
    python roles/grafana/src/datayoti_dashboards.py --check   # exit 1 when the committed files are stale

Everything used in more than one place lives here once: the datasource, the per-model thresholds
(alert rules AND panel thresholds), the rollup tiers, and the SQL snippets (site/device filter, the
model of a device, the rollup-choosing UNION ALL). The output is deterministic: sorted keys, fixed ids.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import yaml

# The SDK suggests its v2 dashboard model; Grafana's file provisioning of dashboards reads the classic JSON model
# (schemaVersion) that dashboard.Dashboard builds, so that is the one used here.
warnings.filterwarnings("ignore", message="Prefer using dashboardv2", category=DeprecationWarning)

from grafana_foundation_sdk.builders import alerting as alerting_builder  # noqa: E402
from grafana_foundation_sdk.builders import common as common_builder  # noqa: E402
from grafana_foundation_sdk.builders import dashboard as dashboard_builder  # noqa: E402
from grafana_foundation_sdk.builders import stat, table, timeseries  # noqa: E402
from grafana_foundation_sdk.cog import builder as cogbuilder  # noqa: E402
from grafana_foundation_sdk.cog import variants as cogvariants  # noqa: E402
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.models import alerting as alerting_model  # noqa: E402
from grafana_foundation_sdk.models import common as common_model  # noqa: E402
from grafana_foundation_sdk.models import dashboard as dashboard_model  # noqa: E402

ROLE_DIR = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = "files/dashboards"
ALERTING_DIR = "files/alerting"
ALERT_RULES_FILE = "datayoti-alert-rules.yaml"

# ---------------------------------------------------------------------------------------------------------------
# Contracts (DESIGN-grafana.md): the datasource, the folder, the uids.
# ---------------------------------------------------------------------------------------------------------------
DATASOURCE_TYPE = "grafana-postgresql-datasource"
DATASOURCE_UID = "datayoti-timescaledb"  # = __grafana_datasource_uid in roles/grafana/vars/main.yml (a test checks)
FOLDER_TITLE = "DataYoti"
RULE_GROUP = "datayoti"
RULE_GROUP_INTERVAL = "1m"
ORG_ID = 1
EXPRESSION_DATASOURCE_UID = "__expr__"

DASHBOARDS = {  # file stem: (uid, title)
    "iot-overview": ("datayoti-iot-overview", "IoT Overview"),
    "sensor-metrics": ("datayoti-sensor-metrics", "Sensor Metrics"),
    "system-health": ("datayoti-system-health", "System Health"),
}
TAGS = ["datayoti"]
REFRESH = "1m"

# ---------------------------------------------------------------------------------------------------------------
# Thresholds: one table, read by the alert rules and by the panels.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """The range a sensor model measures reliably; outside it, a reading is suspect (alert)."""

    low: float
    high: float


@dataclass(frozen=True)
class Metric:
    column: str
    title: str
    unit: str  # Grafana unit id


METRICS = (
    Metric("temperature", "Temperature", "celsius"),
    Metric("humidity", "Humidity", "humidity"),
)

# Sensor models and their ranges, from the DHT11 and DHT22 (AM2302) data sheets.
MODEL_THRESHOLDS: dict[str, dict[str, Band]] = {
    "DHT11": {"temperature": Band(2, 45), "humidity": Band(25, 85)},
    "DHT22": {"temperature": Band(-10, 45), "humidity": Band(10, 90)},
}
# devices.device_type of each model (`datayoti device add --model`); any other type counts as DEFAULT_MODEL,
# the original stack's 'ESP32-DHT' included.
MODEL_DEVICE_TYPES: dict[str, tuple[str, ...]] = {"DHT11": ("ESP32-DHT11",), "DHT22": ("ESP32-DHT22", "ESP32-DHT")}
DEFAULT_MODEL = "DHT22"

# The firmware reports once a minute; devices.last_data_at/last_heartbeat_at are rewritten at most every 30 s.
REPORT_INTERVAL = timedelta(minutes=1)
LAST_SEEN_GRANULARITY = timedelta(seconds=30)
SILENT_REPORTS = 3
SILENT_AFTER = SILENT_REPORTS * REPORT_INTERVAL + LAST_SEEN_GRANULARITY
# An out-of-range alert looks at each device's latest reading if it is this recent (older: the silent alert's case).
FRESH_READING = timedelta(minutes=10)

REJECT_WINDOW = timedelta(minutes=10)
REJECT_RATE_PERCENT = 5
REJECT_MIN_COUNT = 10
BACKLOG_MAX = 1000
BACKLOG_FOR = "5m"
DISK_FREE_MIN_PERCENT = 10
STATS_FRESH = timedelta(minutes=15)  # appliance_stats is written every 5 minutes (the ingestor's [stats])
# Card writes: issue 12 measured the whole appliance at about 450 MB/day idle (19 MB/h) and about 2,600 MB/day
# (108 MB/h) for the reference fleet before its fixes. Above 100 MB/h (2.4 GB/day, 0.9 TB/year) the card wears
# at least as fast as that unfixed figure: something writes more than it should.
CARD_WRITES_MAX_MB_PER_HOUR = 100
MB = 1000 * 1000

# ---------------------------------------------------------------------------------------------------------------
# Rollup tiers: which table a time-series panel reads, by the width of the dashboard's time range.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tier:
    table: str
    time_column: str
    bucket: timedelta  # one row per device per bucket (raw: the firmware's report interval)
    rollup: bool  # the table holds avg_<metric> and measurement_count per bucket


ROLLUP_TIERS = (
    Tier("sensor_data", "time", REPORT_INTERVAL, rollup=False),
    Tier("sensor_data_semi_hourly", "bucket_start", timedelta(minutes=30), rollup=True),
    Tier("sensor_data_hourly", "bucket_start", timedelta(hours=1), rollup=True),
    Tier("sensor_data_daily", "bucket_start", timedelta(days=1), rollup=True),
)
# A panel reads the finest tier whose rows for the range and the chosen devices stay within this budget
# (the coarsest tier otherwise): one device is raw for a week, 50 devices are raw for 3 hours.
ROWS_BUDGET = 10_000


def tier_rows(tier: Tier, width: timedelta, devices: int) -> float:
    """Rows a tier holds for a range of this width and this many devices."""
    return width / tier.bucket * devices


def tier_serves(tier: Tier, width: timedelta, devices: int) -> bool:
    """The Python reading of tier_condition(): the tests check that exactly one tier serves any range."""
    i = ROLLUP_TIERS.index(tier)
    finer_too_big = i == 0 or tier_rows(ROLLUP_TIERS[i - 1], width, devices) > ROWS_BUDGET
    fits = i == len(ROLLUP_TIERS) - 1 or tier_rows(tier, width, devices) <= ROWS_BUDGET
    return finer_too_big and fits


def rollup_tier(width: timedelta, devices: int) -> Tier:
    return next(t for t in ROLLUP_TIERS if tier_serves(t, width, devices))


# ---------------------------------------------------------------------------------------------------------------
# SQL snippets. Grafana's PostgreSQL macros (pkg/tsdb/grafana-postgresql-datasource/macros.go):
# $__timeFrom()/$__timeTo() expand to a quoted RFC 3339 literal ('2026-01-01T00:00:00Z'), so they need a cast;
# $__timeGroupAlias(col, $__interval) to time_bucket('60.000s',col) AS "time" (the datasource has timescaledb: true).
# The macro's argument list ends at the first ')': no parentheses inside a macro call.
# Panels GROUP BY ordinal positions: a second $__timeGroup(...) followed by ',' would get an alias added.
# ---------------------------------------------------------------------------------------------------------------
NO_SITE = "(no site)"
RANGE_WIDTH = "($__timeTo()::timestamptz - $__timeFrom()::timestamptz)"
SELECTED_COUNT = "(SELECT count(*) FROM selected)"  # the panels' CTE `selected`: the chosen devices


def sql_interval(delta: timedelta) -> str:
    return f"interval '{int(delta.total_seconds())} seconds'"


def sql_number(value: float) -> str:
    return f"{value:g}"


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def site_of(alias: str) -> str:
    """A device's site as text; devices without one are grouped under NO_SITE."""
    return f"coalesce({alias}.site_id, {sql_string(NO_SITE)})"


def model_of(alias: str) -> str:
    """The sensor model of a devices row: one of MODEL_THRESHOLDS' keys."""
    whens = " ".join(
        f"WHEN {alias}.device_type IN ({', '.join(sql_string(t) for t in types)}) THEN {sql_string(model)}"
        for model, types in sorted(MODEL_DEVICE_TYPES.items()) if model != DEFAULT_MODEL)
    return f"CASE {whens} ELSE {sql_string(DEFAULT_MODEL)} END"


def last_seen(alias: str) -> str:
    return f"greatest({alias}.last_data_at, {alias}.last_heartbeat_at)"


def thresholds_values(metric: str) -> str:
    """The per-model band of a metric as a VALUES list: (model, low, high)."""
    rows = ", ".join(f"({sql_string(model)}, {sql_number(bands[metric].low)}::float8, "
                     f"{sql_number(bands[metric].high)}::float8)"
                     for model, bands in sorted(MODEL_THRESHOLDS.items()))
    return f"(VALUES {rows}) AS t(model, low, high)"


def selected_devices(model: str | None = None) -> str:
    """The device ids chosen by the $site and $device variables (multi-valued, All), optionally of one model."""
    conditions = ["d.device_id IN ($device)", f"{site_of('d')} IN ($site)"]
    if model is not None:
        conditions.append(f"{model_of('d')} = {sql_string(model)}")
    return "SELECT d.device_id FROM devices d WHERE " + " AND ".join(conditions)


def tier_rows_sql(tier: Tier, devices: str) -> str:
    return f"extract(epoch FROM {RANGE_WIDTH}) / {int(tier.bucket.total_seconds())} * {devices}"


def tier_condition(tier: Tier) -> str:
    """The one-time filter that switches a UNION ALL branch on where tier_serves() says so."""
    i = ROLLUP_TIERS.index(tier)
    parts = []
    if i > 0:
        parts.append(f"{tier_rows_sql(ROLLUP_TIERS[i - 1], SELECTED_COUNT)} > {ROWS_BUDGET}")
    if i < len(ROLLUP_TIERS) - 1:
        parts.append(f"{tier_rows_sql(tier, SELECTED_COUNT)} <= {ROWS_BUDGET}")
    return " AND ".join(parts)


def raw_range_cap(time_column: str) -> str:
    """Raw-only panels (no rollup): at most ROWS_BUDGET rows, the end of the range, for the chosen devices.

    The first bound (one device's share) is a constant, so that chunks before it are excluded when the query
    is planned; the second depends on how many devices are chosen.
    """
    one_device = ROWS_BUDGET * REPORT_INTERVAL
    minutes = f"({ROWS_BUDGET} * {int(REPORT_INTERVAL.total_seconds() // 60)} / greatest({SELECTED_COUNT}, 1))::int"
    return (f"{time_column} >= $__timeTo()::timestamptz - {sql_interval(one_device)}\n"
            f"  AND {time_column} >= $__timeTo()::timestamptz - make_interval(mins => {minutes})")


def metric_by_range(metric: str, model: str) -> str:
    """One series per device: raw readings, the 30-minute or the hourly rollup, chosen by the range width.

    Each UNION ALL branch is guarded by a condition on constants only, which PostgreSQL evaluates once
    (a one-time filter): the branches whose condition is false are never run.
    """
    branches = []
    for tier in ROLLUP_TIERS:
        col = f"r.{tier.time_column}"
        if tier.rollup:
            value = f"sum(r.avg_{metric} * r.measurement_count) / sum(r.measurement_count)"
        else:
            value = f"avg(r.{metric})"
        # Raw serves at most ROWS_BUDGET readings of one device: a constant bound, so that the planner
        # does not open a year of chunks for a branch that will not run.
        most = sql_interval(ROWS_BUDGET * tier.bucket)
        bound = "" if tier.rollup else f"  AND {col} >= $__timeTo()::timestamptz - {most}\n"
        branches.append(
            f"SELECT $__timeGroupAlias({col}, $__interval), r.device_id AS metric, {value} AS value\n"
            f"FROM {tier.table} r\n"
            f"WHERE {tier_condition(tier)}\n"
            f"  AND $__timeFilter({col})\n{bound}"
            f"  AND r.device_id IN (SELECT device_id FROM selected)\n"
            f"GROUP BY 1, 2")
    return (f"WITH selected AS ({selected_devices(model)})\n"
            + "\nUNION ALL\n".join(branches)
            + "\nORDER BY 1, 2")


# ---------------------------------------------------------------------------------------------------------------
# The SDK has no PostgreSQL query type: this is the datasource's query model (rawSql, format, editorMode).
# ---------------------------------------------------------------------------------------------------------------


class SqlQuery(cogvariants.Dataquery):
    def __init__(self, ref_id: str, raw_sql: str, fmt: str) -> None:
        self.ref_id, self.raw_sql, self.fmt = ref_id, raw_sql, fmt

    def to_json(self) -> dict[str, object]:
        return {"datasource": datasource_ref().to_json(), "editorMode": "code", "format": self.fmt,
                "rawQuery": True, "rawSql": self.raw_sql, "refId": self.ref_id}


class Sql(cogbuilder.Builder[SqlQuery]):
    def __init__(self, raw_sql: str, fmt: str = "time_series", ref_id: str = "A") -> None:
        assert fmt in ("time_series", "table")
        self._query = SqlQuery(ref_id, raw_sql, fmt)

    def build(self) -> SqlQuery:
        return self._query


class ExpressionModel(cogvariants.Dataquery):
    def __init__(self, payload: dict) -> None:
        self.payload = payload

    def to_json(self) -> dict[str, object]:
        return self.payload


class Expression(cogbuilder.Builder[ExpressionModel]):
    def __init__(self, payload: dict) -> None:
        self._model = ExpressionModel(payload)

    def build(self) -> ExpressionModel:
        return self._model


def datasource_ref() -> common_model.DataSourceRef:
    return common_model.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


# ---------------------------------------------------------------------------------------------------------------
# Panel helpers
# ---------------------------------------------------------------------------------------------------------------


def band_thresholds(band: Band) -> dashboard_builder.ThresholdsConfig:
    """Red below the band, green in it, red above it: the alert's own numbers."""
    return (dashboard_builder.ThresholdsConfig().mode(dashboard_model.ThresholdsMode.ABSOLUTE).steps([
        dashboard_model.Threshold(value=None, color="red"),
        dashboard_model.Threshold(value=band.low, color="green"),
        dashboard_model.Threshold(value=band.high, color="red"),
    ]))


def upper_thresholds(limit: float, color: str = "red") -> dashboard_builder.ThresholdsConfig:
    return (dashboard_builder.ThresholdsConfig().mode(dashboard_model.ThresholdsMode.ABSOLUTE).steps([
        dashboard_model.Threshold(value=None, color="green"),
        dashboard_model.Threshold(value=limit, color=color),
    ]))


def lower_thresholds(limit: float) -> dashboard_builder.ThresholdsConfig:
    return (dashboard_builder.ThresholdsConfig().mode(dashboard_model.ThresholdsMode.ABSOLUTE).steps([
        dashboard_model.Threshold(value=None, color="red"),
        dashboard_model.Threshold(value=limit, color="green"),
    ]))


def series_panel(title: str, sql: str, unit: str, description: str, width: int = 12, height: int = 8,
                 thresholds: dashboard_builder.ThresholdsConfig | None = None,
                 bars: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(datasource_ref())
             .with_target(Sql(sql)).unit(unit).span(width).height(height).interval("1m")
             .legend(common_builder.VizLegendOptions().show_legend(True)
                     .display_mode(common_model.LegendDisplayMode.LIST)
                     .placement(common_model.LegendPlacement.BOTTOM))
             .line_width(1).fill_opacity(10).span_nulls(False))
    if bars:
        panel = panel.draw_style(common_model.GraphDrawStyle.BARS).fill_opacity(60)
    if thresholds is not None:
        panel = panel.thresholds(thresholds).thresholds_style(
            common_builder.GraphThresholdsStyleConfig().mode(common_model.GraphThresholdsStyleMode.DASHED))
    return panel


def table_panel(title: str, sql: str, description: str, width: int = 24, height: int = 8) -> table.Panel:
    return (table.Panel().title(title).description(description).datasource(datasource_ref())
            .with_target(Sql(sql, fmt="table")).span(width).height(height))


def stat_panel(title: str, sql: str, description: str, unit: str = "none", width: int = 6, height: int = 4,
               thresholds: dashboard_builder.ThresholdsConfig | None = None) -> stat.Panel:
    panel = (stat.Panel().title(title).description(description).datasource(datasource_ref())
             .with_target(Sql(sql, fmt="table")).unit(unit).span(width).height(height)
             .graph_mode(common_model.BigValueGraphMode.NONE)
             .color_mode(common_model.BigValueColorMode.BACKGROUND)
             .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    if thresholds is not None:
        panel = panel.thresholds(thresholds)
    return panel


def site_device_variables() -> list[dashboard_builder.QueryVariable]:
    """$site and $device, multi-valued with All; $device lists the devices of the chosen sites.

    All is a subquery (a custom allValue, which Grafana inserts as it is): `IN ($device)` stays valid SQL with no
    device at all, and a large fleet's All is not a long list of literals.
    """
    site_sql = f"SELECT DISTINCT {site_of('d')} AS site FROM devices d ORDER BY 1"
    device_sql = f"SELECT d.device_id FROM devices d WHERE {site_of('d')} IN ($site) ORDER BY 1"
    all_sites = f"SELECT {site_of('a')} FROM devices a"
    all_devices = "SELECT a.device_id FROM devices a"
    out = []
    for name, label, sql, all_value in (("site", "Site", site_sql, all_sites),
                                        ("device", "Device", device_sql, all_devices)):
        out.append(dashboard_builder.QueryVariable(name).label(label).datasource(datasource_ref())
                   .query(sql).definition(sql).multi(True).include_all(True).all_value(all_value)
                   .refresh(dashboard_model.VariableRefresh.ON_DASHBOARD_LOAD)
                   .sort(dashboard_model.VariableSort.ALPHABETICAL_ASC)
                   .current(dashboard_model.VariableOption(selected=True, text="All", value="$__all")))
    return out


def new_dashboard(stem: str, time_from: str, description: str) -> dashboard_builder.Dashboard:
    uid, title = DASHBOARDS[stem]
    return (dashboard_builder.Dashboard(title).uid(uid).description(description).tags(TAGS)
            .refresh(REFRESH).time(time_from, "now").timezone("browser").editable()
            .tooltip(dashboard_model.DashboardCursorSync.CROSSHAIR))


# ---------------------------------------------------------------------------------------------------------------
# IoT Overview
# ---------------------------------------------------------------------------------------------------------------
HEALTH_STATES = (("online", "green"), ("warning", "orange"), ("offline", "red"))


def iot_overview() -> dashboard_builder.Dashboard:
    counts = ", ".join(f"count(*) FILTER (WHERE h.health_status = {sql_string(state)}) AS {state}"
                       for state, _ in HEALTH_STATES)
    counts_sql = (f"SELECT {counts}\n"
                  "FROM device_health h\n"
                  "JOIN devices d ON d.device_id = h.device_id\n"
                  "WHERE d.is_active")
    devices_sql = (f"SELECT {site_of('d')} AS site,\n"
                   "       d.device_id AS device,\n"
                   "       d.device_name AS name,\n"
                   f"       {model_of('d')} AS model,\n"
                   "       r.temperature,\n"
                   "       r.humidity,\n"
                   "       h.health_status AS state,\n"
                   f"       {last_seen('d')} AS last_seen\n"
                   "FROM devices d\n"
                   "JOIN device_health h ON h.device_id = d.device_id\n"
                   "LEFT JOIN latest_sensor_readings r ON r.device_id = d.device_id\n"
                   "WHERE d.is_active\n"
                   "ORDER BY 1, 2")
    state_colors = [dashboard_model.ValueMap(options={
        state: dashboard_model.ValueMappingResult(color=color, index=i)
        for i, (state, color) in enumerate(HEALTH_STATES)})]
    count_panel = stat_panel(
        "Devices by state", counts_sql,
        "Active devices by device_health state: online (data or a heartbeat within health_thresholds.online_within), "
        "warning (within warning_within), offline.", width=24)
    for state, color in HEALTH_STATES:
        count_panel = count_panel.override_by_name(state, [
            dashboard_model.DynamicConfigValue(id_val="color", value={"fixedColor": color, "mode": "fixed"})])
    devices = (table_panel(
        "Devices", devices_sql,
        "One row per active device: its site, latest reading, state and when it was last seen "
        "(data or heartbeat).", height=14)
        .mappings(state_colors)
        .override_by_name("temperature", [dashboard_model.DynamicConfigValue(id_val="unit", value="celsius")])
        .override_by_name("humidity", [dashboard_model.DynamicConfigValue(id_val="unit", value="humidity")])
        .override_by_name("state", [dashboard_model.DynamicConfigValue(
            id_val="custom.cellOptions", value={"type": "color-background"})]))
    return (new_dashboard("iot-overview", "now-6h", "Every sensor at a glance: state, latest reading, last seen.")
            .with_panel(count_panel).with_panel(devices))


# ---------------------------------------------------------------------------------------------------------------
# Sensor Metrics
# ---------------------------------------------------------------------------------------------------------------


def tiers_description() -> str:
    tables = ", ".join(t.table for t in ROLLUP_TIERS)
    return (f"Reads the finest of {tables} that holds at most {ROWS_BUDGET:,} rows for the range and the chosen "
            "devices.")


RAW_CAP_DESCRIPTION = (f"Not rolled up: at most {ROWS_BUDGET:,} readings, the end of the range "
                       f"({ROWS_BUDGET // 60} hours for one device, fewer for more).")


def extra_metrics_sql() -> str:
    return (f"WITH selected AS ({selected_devices()})\n"
            "SELECT $__timeGroupAlias(s.time, $__interval),\n"
            "       s.device_id || ' ' || e.key AS metric,\n"
            "       avg(CASE WHEN jsonb_typeof(e.value) = 'number' THEN (e.value)::float8 END) AS value\n"
            "FROM sensor_data s\n"
            "CROSS JOIN LATERAL jsonb_each(s.extra) e\n"
            "WHERE $__timeFilter(s.time)\n"
            f"  AND {raw_range_cap('s.time')}\n"
            "  AND s.extra IS NOT NULL\n"
            "  AND jsonb_typeof(e.value) = 'number'\n"
            "  AND s.device_id IN (SELECT device_id FROM selected)\n"
            "GROUP BY 1, 2\n"
            "ORDER BY 1, 2")


def sensor_metrics() -> dashboard_builder.Dashboard:
    dash = new_dashboard("sensor-metrics", "now-24h",
                         "Temperature, humidity and any extra metric of the chosen sites and devices.")
    for variable in site_device_variables():
        dash = dash.with_variable(variable)
    for model, bands in sorted(MODEL_THRESHOLDS.items()):
        dash = dash.with_row(dashboard_builder.Row(f"{model} sensors"))
        for metric in METRICS:
            band = bands[metric.column]
            dash = dash.with_panel(series_panel(
                f"{metric.title} ({model})", metric_by_range(metric.column, model), metric.unit,
                f"{metric.title} of the chosen {model} sensors, one series per device. {tiers_description()} "
                f"The dashed lines are the {model} alert band: {sql_number(band.low)} to {sql_number(band.high)}.",
                thresholds=band_thresholds(band)))
    dash = dash.with_row(dashboard_builder.Row("Extra metrics"))
    dash = dash.with_panel(series_panel(
        "Extra metrics", extra_metrics_sql(), "short",
        "Numeric fields a device sends beyond temperature and humidity (sensor_data.extra, e.g. pressure or battery), "
        f"one series per device and field. {RAW_CAP_DESCRIPTION}", width=24))
    return dash


# ---------------------------------------------------------------------------------------------------------------
# System Health
# ---------------------------------------------------------------------------------------------------------------


def stats_series(columns: str) -> str:
    return (f"SELECT $__timeGroupAlias(a.time, $__interval),\n{columns}\n"
            "FROM appliance_stats a\n"
            "WHERE $__timeFilter(a.time)\n"
            "GROUP BY 1\n"
            "ORDER BY 1")


def heartbeat_series(column: str) -> str:
    return (f"WITH selected AS ({selected_devices()})\n"
            "SELECT $__timeGroupAlias(b.time, $__interval), b.device_id AS metric,\n"
            f"       avg(b.{column})::float8 AS value\n"
            "FROM device_heartbeats b\n"
            "WHERE $__timeFilter(b.time)\n"
            f"  AND {raw_range_cap('b.time')}\n"
            "  AND b.device_id IN (SELECT device_id FROM selected)\n"
            "GROUP BY 1, 2\n"
            "ORDER BY 1, 2")


def system_health() -> dashboard_builder.Dashboard:
    per_second = "nullif(sum(a.interval_s), 0)"
    ingest = stats_series(f"       sum(a.received) / {per_second} AS received,\n"
                          f"       sum(a.stored) / {per_second} AS stored")
    rejects = stats_series("       sum(a.rejected) AS rejected,\n"
                           "       sum(a.database_refused) AS database_refused,\n"
                           "       sum(a.duplicates) AS duplicates")
    backlog = stats_series("       max(a.backlog) AS backlog")
    storage = stats_series("       max(a.database_bytes) AS database,\n"
                           "       min(a.disk_free_bytes) AS disk_free")
    measured = "nullif(sum(a.interval_s) FILTER (WHERE a.card_written_bytes IS NOT NULL), 0)"
    card = stats_series(f"       sum(a.card_written_bytes) * 3600 / {measured} AS written_per_hour")
    reasons_sql = ("SELECT m.reason, count(*) AS messages, max(m.received_at) AS last_seen\n"
                   "FROM rejected_messages m\n"
                   "WHERE $__timeFilter(m.received_at)\n"
                   "GROUP BY 1\n"
                   "ORDER BY 2 DESC")
    latest_rejects_sql = ("SELECT m.received_at AS time, m.reason, m.topic, m.detail, m.payload_bytes\n"
                          "FROM rejected_messages m\n"
                          "WHERE $__timeFilter(m.received_at)\n"
                          "ORDER BY m.received_at DESC\n"
                          "LIMIT 50")
    disk_sql = ("SELECT a.database_bytes AS database,\n"
                "       a.disk_free_bytes AS disk_free,\n"
                "       100.0 * a.disk_free_bytes / nullif(a.disk_total_bytes, 0) AS disk_free_percent\n"
                "FROM appliance_stats a\n"
                "WHERE a.disk_total_bytes IS NOT NULL\n"
                "ORDER BY a.time DESC\n"
                "LIMIT 1")
    heartbeats_sql = (f"SELECT {site_of('h')} AS site, h.device_id AS device, h.health_status AS state,\n"
                      "       h.rssi, h.uptime, h.free_heap, h.min_heap, h.ntp_sync, h.last_heartbeat\n"
                      "FROM device_health h\n"
                      f"WHERE h.device_id IN ({selected_devices()})\n"
                      "ORDER BY 1, 2")
    reject_text = ("Messages put in rejected_messages, of which the database refused, and duplicates, per interval. "
                   f"The reject alert fires above {REJECT_RATE_PERCENT} % of received over "
                   f"{int(REJECT_WINDOW.total_seconds() // 60)} minutes (at least {REJECT_MIN_COUNT}).")
    dash = new_dashboard("system-health", "now-24h",
                         "The appliance itself: ingest, rejects, backlog, storage, SD-card writes, sensor heartbeats.")
    for variable in site_device_variables():
        dash = dash.with_variable(variable)
    disk_stat = (stat_panel("Database and disk", disk_sql,
                            "Latest appliance_stats: database size, free space on PostgreSQL's filesystem "
                            f"(the disk alert fires under {DISK_FREE_MIN_PERCENT} %).", width=24)
                 .override_by_name("database", [dashboard_model.DynamicConfigValue(id_val="unit", value="decbytes")])
                 .override_by_name("disk_free", [dashboard_model.DynamicConfigValue(id_val="unit", value="decbytes")])
                 .override_by_name("disk_free_percent", [
                     dashboard_model.DynamicConfigValue(id_val="unit", value="percent"),
                     dashboard_model.DynamicConfigValue(
                         id_val="thresholds", value=lower_thresholds(DISK_FREE_MIN_PERCENT).build().to_json())]))
    return (dash
            .with_row(dashboard_builder.Row("Pipeline"))
            .with_panel(series_panel("Ingest rate", ingest, "reqps",
                                     "Messages taken from the broker and rows committed, per second "
                                     "(appliance_stats)."))
            .with_panel(series_panel("Rejected messages", rejects, "short", reject_text, bars=True))
            .with_panel(series_panel("Backlog", backlog, "short",
                                     "Messages received but not yet committed. The backlog alert fires above "
                                     f"{BACKLOG_MAX} for {BACKLOG_FOR}.", thresholds=upper_thresholds(BACKLOG_MAX)))
            .with_panel(table_panel("Reject reasons", reasons_sql,
                                    "Rejected messages in the range, by reason.", width=12))
            .with_panel(table_panel("Latest rejected messages", latest_rejects_sql,
                                    "The last 50 rejected messages in the range, newest first.", height=10))
            .with_row(dashboard_builder.Row("Storage"))
            .with_panel(disk_stat)
            .with_panel(series_panel("Database size and disk free", storage, "decbytes",
                                     "pg_database_size and the free space of PostgreSQL's filesystem."))
            .with_panel(series_panel("SD card writes per hour", card, "decbytes",
                                     "Bytes written to PostgreSQL's block device, per hour: the SD-card wear "
                                     f"indicator. The alert fires above {CARD_WRITES_MAX_MB_PER_HOUR} MB per hour.",
                                     thresholds=upper_thresholds(CARD_WRITES_MAX_MB_PER_HOUR * MB)))
            .with_row(dashboard_builder.Row("Sensor heartbeats"))
            .with_panel(table_panel("Heartbeats", heartbeats_sql,
                                    "Each chosen device's latest heartbeat: Wi-Fi RSSI, uptime, free and minimum heap, "
                                    "NTP sync.", height=10)
                        .override_by_name("rssi", [dashboard_model.DynamicConfigValue(id_val="unit", value="dBm")])
                        .override_by_name("uptime", [dashboard_model.DynamicConfigValue(id_val="unit", value="s")])
                        .override_by_name("free_heap", [dashboard_model.DynamicConfigValue(id_val="unit",
                                                                                           value="bytes")])
                        .override_by_name("min_heap", [dashboard_model.DynamicConfigValue(id_val="unit",
                                                                                          value="bytes")]))
            .with_panel(series_panel("RSSI", heartbeat_series("rssi"), "dBm",
                                     f"Wi-Fi signal per device, from the heartbeats. {RAW_CAP_DESCRIPTION}"))
            .with_panel(series_panel("Free heap", heartbeat_series("free_heap"), "bytes",
                                     f"Free heap per device, from the heartbeats. {RAW_CAP_DESCRIPTION}")))


# ---------------------------------------------------------------------------------------------------------------
# Alert rules. Contract: refId A returns one row per series: `time` (now()), string label columns and ONE numeric
# column `value`, value > 0 exactly when the series fires. Grafana reads it as a time series (format time_series:
# the string columns become labels), B reduces each series to its last value and C is the threshold B > 0.
# No `$` anywhere in the file: Grafana expands environment variables in provisioning files.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRule:
    uid: str
    title: str
    sql: str
    window: timedelta  # relativeTimeRange of refId A (the SQL uses now() itself)
    for_: str
    severity: str
    summary: str
    description: str
    no_data_state: str = "OK"  # no rows: nothing to alert on (no devices, no stats yet)


def out_of_range_sql(metric: str) -> str:
    return (f"SELECT now() AS time, d.device_id, {site_of('d')} AS site_id, t.model,\n"
            f"       CASE WHEN r.{metric} < t.low THEN t.low - r.{metric}\n"
            f"            WHEN r.{metric} > t.high THEN r.{metric} - t.high\n"
            "            ELSE 0 END::float8 AS value\n"
            "FROM devices d\n"
            "JOIN latest_sensor_readings r ON r.device_id = d.device_id\n"
            f"JOIN {thresholds_values(metric)}\n"
            f"  ON t.model = {model_of('d')}\n"
            "WHERE d.is_active\n"
            f"  AND r.time > now() - {sql_interval(FRESH_READING)}")


def alert_rules() -> list[AlertRule]:
    rules = []
    for metric in METRICS:
        bands = "; ".join(f"{m} {sql_number(b[metric.column].low)} to {sql_number(b[metric.column].high)}"
                          for m, b in sorted(MODEL_THRESHOLDS.items()))
        rules.append(AlertRule(
            uid=f"datayoti-{metric.column}-range", title=f"{metric.title} out of range",
            sql=out_of_range_sql(metric.column), window=FRESH_READING, for_="5m", severity="warning",
            summary=f"{metric.title} out of range on {{{{ .Labels.device_id }}}} ({{{{ .Labels.site_id }}}})",
            description=(f"The latest {metric.column} reading of {{{{ .Labels.device_id }}}}, a "
                         f"{{{{ .Labels.model }}}}, is {{{{ humanize .Values.B.Value }}}} outside its model's band "
                         f"({bands})."),
        ))
    silent_s = int(SILENT_AFTER.total_seconds())
    rules.append(AlertRule(
        uid="datayoti-silent-sensor", title="Sensor silent",
        sql=(f"SELECT now() AS time, d.device_id, {site_of('d')} AS site_id,\n"
             f"       CASE WHEN {last_seen('d')} < now() - {sql_interval(SILENT_AFTER)}\n"
             f"            THEN extract(epoch FROM now() - {last_seen('d')})\n"
             "            ELSE 0 END::float8 AS value\n"
             "FROM devices d\n"
             "WHERE d.is_active\n"
             f"  AND {last_seen('d')} IS NOT NULL"),
        window=SILENT_AFTER, for_="0s", severity="warning",
        summary="Sensor {{ .Labels.device_id }} ({{ .Labels.site_id }}) is silent",
        description=("No reading or heartbeat from {{ .Labels.device_id }} for "
                     "{{ humanizeDuration .Values.B.Value }}: "
                     f"{SILENT_REPORTS} expected reports missed (one a minute; silent after {silent_s} s)."),
    ))
    window = sql_interval(REJECT_WINDOW)
    rules.append(AlertRule(
        uid="datayoti-reject-rate", title="Reject rate high",
        sql=("SELECT now() AS time, CASE WHEN sum(a.rejected) >= "
             f"{REJECT_MIN_COUNT} AND sum(a.rejected) > {REJECT_RATE_PERCENT / 100:g} * sum(a.received)\n"
             "            THEN 100.0 * sum(a.rejected) / sum(a.received)\n"
             "            ELSE 0 END::float8 AS value\n"
             "FROM appliance_stats a\n"
             f"WHERE a.time > now() - {window}"),
        window=REJECT_WINDOW, for_="0s", severity="warning",
        summary="{{ humanize .Values.B.Value }} % of the messages are rejected",
        description=(f"Over the last {int(REJECT_WINDOW.total_seconds() // 60)} minutes more than "
                     f"{REJECT_RATE_PERCENT} % of the received messages (and at least {REJECT_MIN_COUNT}) were "
                     "rejected. The reasons are in the rejected_messages table and on the System Health dashboard."),
    ))
    rules.append(AlertRule(
        uid="datayoti-backlog", title="Ingest backlog growing",
        sql=(f"SELECT now() AS time, CASE WHEN a.backlog > {BACKLOG_MAX} THEN a.backlog ELSE 0 END::float8 AS value\n"
             "FROM appliance_stats a\n"
             f"WHERE a.time > now() - {sql_interval(STATS_FRESH)}\n"
             "ORDER BY a.time DESC\n"
             "LIMIT 1"),
        window=STATS_FRESH, for_=BACKLOG_FOR, severity="warning",
        summary="Ingest backlog at {{ humanize .Values.B.Value }} messages",
        description=(f"More than {BACKLOG_MAX} messages received but not committed for {BACKLOG_FOR}: the database "
                     "is slow or refusing writes."),
    ))
    # The backlog and disk rules read appliance_stats: when the ingestor stops writing it (stopped, or the
    # database refusing its writes, a full disk included), they see no rows; this rule sees the silence.
    rules.append(AlertRule(
        uid="datayoti-stats-stale", title="Ingestor figures stale",
        sql=("SELECT now() AS time,\n"
             f"       CASE WHEN max(a.time) < now() - {sql_interval(STATS_FRESH)}\n"
             "            THEN extract(epoch FROM now() - max(a.time))\n"
             "            ELSE 0 END::float8 AS value\n"
             "FROM appliance_stats a"),
        window=STATS_FRESH, for_="0s", severity="critical",
        summary="The ingestor has written no figures for {{ humanizeDuration .Values.B.Value }}",
        description=(f"No appliance_stats row for more than {int(STATS_FRESH.total_seconds() // 60)} minutes: "
                     "the ingestor is stopped, or the database refuses its writes (a full disk, for one). "
                     "The backlog and disk rules cannot see past this; run `datayoti status` on the Pi."),
    ))
    rules.append(AlertRule(
        uid="datayoti-disk-free", title="Disk almost full",
        sql=("SELECT now() AS time,\n"
             f"       CASE WHEN a.disk_free_bytes < {DISK_FREE_MIN_PERCENT / 100:g} * a.disk_total_bytes\n"
             "            THEN 100.0 * (a.disk_total_bytes - a.disk_free_bytes) / a.disk_total_bytes\n"
             "            ELSE 0 END::float8 AS value\n"
             "FROM appliance_stats a\n"
             f"WHERE a.time > now() - {sql_interval(STATS_FRESH)}\n"
             "  AND a.disk_total_bytes > 0\n"
             "ORDER BY a.time DESC\n"
             "LIMIT 1"),
        window=STATS_FRESH, for_="5m", severity="critical",
        summary="Disk {{ humanize .Values.B.Value }} % full",
        description=(f"Less than {DISK_FREE_MIN_PERCENT} % free on PostgreSQL's filesystem. Lower the retention "
                     "(retention.* in /etc/datayoti/ingestor.toml) or use a larger card."),
    ))
    rules.append(AlertRule(
        uid="datayoti-card-writes", title="SD card writes high",
        sql=(f"SELECT now() AS time, CASE WHEN sum(a.card_written_bytes) > {CARD_WRITES_MAX_MB_PER_HOUR} * {MB}\n"
             f"            THEN sum(a.card_written_bytes) / {MB}\n"
             "            ELSE 0 END::float8 AS value\n"
             "FROM appliance_stats a\n"
             f"WHERE a.time > now() - {sql_interval(timedelta(hours=1))}"),
        window=timedelta(hours=1), for_="0s", severity="warning",
        summary="{{ humanize .Values.B.Value }} MB written to the SD card in the last hour",
        description=(f"More than {CARD_WRITES_MAX_MB_PER_HOUR} MB written to PostgreSQL's block device in an hour: "
                     "the card wears faster than the appliance was measured to need (issue 12)."),
    ))
    return rules


def rule_document(rule: AlertRule) -> dict:
    """One rule in Grafana's file-provisioning format, built with the SDK's alerting builders."""
    window = alerting_model.RelativeTimeRange(from_val=int(rule.window.total_seconds()), to=0)
    query = (alerting_builder.Query("A").datasource_uid(DATASOURCE_UID).relative_time_range(window)
             .model(Sql(rule.sql, fmt="time_series")))
    expression_ds = {"type": EXPRESSION_DATASOURCE_UID, "uid": EXPRESSION_DATASOURCE_UID}
    reduce = (alerting_builder.Query("B").datasource_uid(EXPRESSION_DATASOURCE_UID).relative_time_range(window)
              .model(Expression({"datasource": expression_ds, "expression": "A", "reducer": "last", "refId": "B",
                                 "settings": {"mode": "dropNN"}, "type": "reduce"})))
    threshold = (alerting_builder.Query("C").datasource_uid(EXPRESSION_DATASOURCE_UID).relative_time_range(window)
                 .model(Expression({
                     "conditions": [{"evaluator": {"params": [0], "type": "gt"}, "operator": {"type": "and"},
                                     "query": {"params": ["C"]}, "reducer": {"params": [], "type": "last"},
                                     "type": "query"}],
                     "datasource": expression_ds, "expression": "B", "refId": "C", "type": "threshold"})))
    built = (alerting_builder.Rule(rule.title).uid(rule.uid).condition("C").with_query(query).with_query(reduce)
             .with_query(threshold)
             .no_data_state(rule.no_data_state).exec_err_state("Error").for_val(rule.for_).is_paused(False)
             .labels({"severity": rule.severity})
             .annotations({"summary": rule.summary, "description": rule.description})
             .build())
    doc = json.loads(json.dumps(built, cls=JSONEncoder))
    # The API's form names its folder, group and org per rule; the file form names them once per group.
    for key in ("folderUID", "ruleGroup", "orgID"):
        doc.pop(key, None)
    return doc


def alert_rules_document() -> dict:
    return {"apiVersion": 1, "groups": [{
        "orgId": ORG_ID, "name": RULE_GROUP, "folder": FOLDER_TITLE, "interval": RULE_GROUP_INTERVAL,
        "rules": [rule_document(r) for r in alert_rules()],
    }]}


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block sequences indented under their key, multi-line strings as literal blocks (yamllint's defaults)."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _str_representer(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dashboard_document(builder: dashboard_builder.Dashboard) -> dict:
    doc = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for panel_id, panel in enumerate(doc.get("panels", []), start=1):  # stable ids, in order
        panel["id"] = panel_id
    return doc


def render() -> dict[str, str]:
    """Relative path (to the role) -> file content."""
    out = {}
    for stem, build in (("iot-overview", iot_overview), ("sensor-metrics", sensor_metrics),
                        ("system-health", system_health)):
        doc = dashboard_document(build())
        out[f"{DASHBOARD_DIR}/{stem}.json"] = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    rules = yaml.dump(alert_rules_document(), Dumper=_Dumper, sort_keys=True, default_flow_style=False,
                      allow_unicode=True, width=150)
    header = ("---\n# Generated by roles/grafana/src/datayoti_dashboards.py (`make dashboards`): do not edit.\n")
    out[f"{ALERTING_DIR}/{ALERT_RULES_FILE}"] = header + rules
    return out


def write(root: Path) -> list[Path]:
    written = []
    for rel, content in render().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def stale(root: Path) -> list[str]:
    """The generated files under root that differ from what the generator writes now."""
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp))
        return [rel for rel, content in render().items()
                if not (root / rel).is_file() or (root / rel).read_text(encoding="utf-8") != content]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed files are not up to date")
    parser.add_argument("--root", type=Path, default=ROLE_DIR, help="the role directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.check:
        files = stale(args.root)
        for rel in files:
            print(f"stale: {args.root / rel} (run `make dashboards`)", file=sys.stderr)
        return 1 if files else 0
    for path in write(args.root):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
