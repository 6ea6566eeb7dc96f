"""tests/grafana_sql.py: Grafana's macros and variables, ported; the dashboards' and alert rules' queries extracted.

The macro examples are Grafana's own (pkg/tsdb/grafana-postgresql-datasource/macros_test.go @ e6c13507),
the variable examples those of packages/grafana-sql/src/datasource/variable-interpolation.test.ts @ 5b8d3ba7.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grafana_sql as g
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "roles" / "grafana" / "files" / "dashboards"
ALERTS = REPO / "roles" / "grafana" / "files" / "alerting" / "datayoti-alert-rules.yaml"
DATASOURCE_UID = "datayoti-timescaledb"

FROM = datetime(2018, 4, 12, 18, 0, 0, tzinfo=UTC)
TO = FROM + timedelta(minutes=5)


def expand(sql: str, timescaledb: bool = False, time_from=FROM, time_to=TO) -> str:
    return g.postgres_macros(sql, time_from, time_to, timescaledb)


# ------------------------------------------------------------------ macros_test.go, case by case

@pytest.mark.parametrize(("sql", "expected"), [
    ("select $__time(time_column)", 'select time_column AS "time"'),
    ("select min($__time(time_column))", 'select min(time_column AS "time")'),
    ("WHERE $__timeFilter(time_column)", "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"),
    ("select $__timeFrom()", "select '2018-04-12T18:00:00Z'"),
    ("select $__timeTo()", "select '2018-04-12T18:05:00Z'"),
    # pre 5.3 compatibility: a ',' right after the macro names the column
    ("SELECT $__timeGroup(time_column,'5m'), value",
     'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'),
    ("SELECT $__timeGroup(time_column,'5m') as time, value",
     "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"),
    ("SELECT $__timeGroup(time_column,'5m')", "SELECT floor(extract(epoch from time_column)/300)*300"),
    ("SELECT $__timeGroupAlias(time_column,'5m')", 'SELECT floor(extract(epoch from time_column)/300)*300 AS "time"'),
    ("$__timeGroup(time_column , '5m')", "floor(extract(epoch from time_column)/300)*300"),
    ("$__timeGroupAlias(time_column , '5m')", 'floor(extract(epoch from time_column)/300)*300 AS "time"'),
    ("select $__unixEpochFilter(time)", f"select time >= {int(FROM.timestamp())} AND time <= {int(TO.timestamp())}"),
    ("select $__unixEpochNanoFilter(time)",
     f"select time >= {int(FROM.timestamp()) * 10**9} AND time <= {int(TO.timestamp()) * 10**9}"),
    ("select $__unixEpochNanoFrom()", f"select {int(FROM.timestamp()) * 10**9}"),
    ("select $__unixEpochNanoTo()", f"select {int(TO.timestamp()) * 10**9}"),
    ("SELECT $__unixEpochGroup(time_column+time_adjustment,'5m')",
     "SELECT floor((time_column+time_adjustment)/300)*300"),
    ("SELECT $__unixEpochGroupAlias(time_column+time_adjustment,'5m')",
     'SELECT floor((time_column+time_adjustment)/300)*300 AS "time"'),
])
def test_macros_test_go_examples(sql, expected):
    assert expand(sql) == expected


@pytest.mark.parametrize(("sql", "expected"), [
    ("GROUP BY $__timeGroup(time_column,'5m')", "GROUP BY time_bucket('300.000s',time_column)"),
    ("GROUP BY $__timeGroup(time_column , '5m')", "GROUP BY time_bucket('300.000s',time_column)"),
    ("GROUP BY $__timeGroup(time_column , '12d')", "GROUP BY time_bucket('1036800.000s',time_column)"),
    ("GROUP BY $__timeGroup(time_column , '20ms')", "GROUP BY time_bucket('0.020s',time_column)"),
])
def test_macros_test_go_examples_with_timescaledb(sql, expected):
    assert expand(sql, timescaledb=True) == expected


@pytest.mark.parametrize(("time_from", "time_to"), [
    (datetime(1960, 2, 1, 7, 0, tzinfo=UTC), datetime(1965, 2, 3, 8, 0, tzinfo=UTC)),
    (datetime(1960, 2, 1, 7, 0, tzinfo=UTC), datetime(1980, 2, 3, 8, 0, tzinfo=UTC)),
])
def test_macros_test_go_ranges_before_1970(time_from, time_to):
    assert expand("WHERE $__timeFilter(time_column)", time_from=time_from, time_to=time_to) == \
        f"WHERE time_column BETWEEN '{time_from:%Y-%m-%dT%H:%M:%SZ}' AND '{time_to:%Y-%m-%dT%H:%M:%SZ}'"
    assert expand("select $__unixEpochFilter(time)", time_from=time_from, time_to=time_to) == \
        f"select time >= {int(time_from.timestamp())} AND time <= {int(time_to.timestamp())}"
    assert expand("select $__unixEpochNanoFilter(time)", time_from=time_from, time_to=time_to) == \
        f"select time >= {int(time_from.timestamp()) * 10**9} AND time <= {int(time_to.timestamp()) * 10**9}"


def test_macros_test_go_half_seconds_keep_their_fraction():
    time_from = datetime(1960, 2, 1, 7, 0, 0, 500000, tzinfo=UTC)
    time_to = datetime(1980, 2, 3, 8, 0, 0, 500000, tzinfo=UTC)
    assert g.go_rfc3339nano(time_from) == "1960-02-01T07:00:00.5Z"
    assert g.go_rfc3339nano(time_to) == "1980-02-03T08:00:00.5Z"
    assert expand("WHERE $__timeFilter(time_column)", time_from=time_from, time_to=time_to) == \
        "WHERE time_column BETWEEN '1960-02-01T07:00:00.5Z' AND '1980-02-03T08:00:00.5Z'"
    # Go's Unix() rounds down, also before 1970
    assert g.go_unix(time_from) == int(time_from.timestamp() // 1)


# ------------------------------------------------------------------ errors and fill modes (macros.go)

@pytest.mark.parametrize(("sql", "message"), [
    ("SELECT $__timeGroup(time)", "macro __timeGroup needs time column and interval and optional fill value"),
    ("SELECT $__timeGroupAlias(time)", "macro __timeGroup needs time column and interval and optional fill value"),
    ("SELECT $__unixEpochGroup(t)", "macro __unixEpochGroup needs time column and interval and optional fill value"),
    ("SELECT $__timeGroup(time, 'soon')", "error parsing interval 'soon'"),
    ("SELECT $__timeGroup(time, '5m', lots)", "error parsing fill value lots"),
    ("SELECT $__timeFilters(time)", 'unknown macro "__timeFilters"'),
    ("SELECT $__nope(a), $__timeGroup(time)", 'unknown macro "__nope"'),  # the first error wins
])
def test_macro_errors(sql, message):
    with pytest.raises(g.MacroError, match=re.escape(message)):
        expand(sql, timescaledb=True)


def test_a_macro_without_arguments_gets_one_empty_argument_as_in_go():
    # strings.Split("", ",") is [""]: "missing time column argument" never happens for $__time().
    assert expand("SELECT $__time()") == 'SELECT  AS "time"'


@pytest.mark.parametrize(("argument", "mode", "value"), [("NULL", "null", None), ("previous", "previous", None),
                                                          ("0", "value", 0.0), ("-1.5", "value", -1.5)])
def test_fill_argument_sets_up_the_fill_mode(argument, mode, value):
    fill: list[g.FillMode] = []
    sql = g.postgres_macros(f"SELECT $__timeGroupAlias(time, '1h', {argument})", FROM, TO, True, fill)
    assert sql == "SELECT time_bucket('3600.000s',time) AS \"time\""
    assert fill == [g.FillMode(3600.0, mode, value)]


def test_sqleng_interpolate_global_substitutions_come_first():
    sql = "$__interval_ms $__interval $__unixEpochFrom() $__unixEpochTo()"
    assert g.sqleng_interpolate(sql, FROM, TO, 90 * g.NS_PER_S) == \
        f"90000 1m {int(FROM.timestamp())} {int(TO.timestamp())}"
    assert g.backend_expand("SELECT $__timeGroup(time, $__interval)", FROM, TO, 3600 * g.NS_PER_S) == \
        "SELECT time_bucket('3600.000s',time)"


@pytest.mark.parametrize(("text", "ns"), [
    ("300ms", 300 * g.NS_PER_MS), ("1h30m", 5400 * g.NS_PER_S), ("1.5h", 5400 * g.NS_PER_S), (".5s", g.NS_PER_S // 2),
    ("-1m", -60 * g.NS_PER_S), ("0", 0), ("+2s", 2 * g.NS_PER_S), ("1us", 1000), ("1µs", 1000), ("7ns", 7),
])
def test_go_parse_duration(text, ns):
    assert g.go_parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "1", "x", "1x", ".s", "-", "1d"])
def test_go_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        g.go_parse_duration(text)


def test_gtime_intervals_in_days_weeks_months_and_years_are_calendar_steps():
    now = datetime(2024, 1, 31, 12, tzinfo=UTC)
    assert g.gtime_parse_interval("2d", now) == 2 * 86400 * g.NS_PER_S
    assert g.gtime_parse_interval("1w", now) == 7 * 86400 * g.NS_PER_S
    assert g.gtime_parse_interval("1M", now) == 31 * 86400 * g.NS_PER_S  # Jan 31 + 1 month = Mar 2 (leap year)
    assert g.gtime_parse_interval("1y", now) == 366 * 86400 * g.NS_PER_S


@pytest.mark.parametrize(("ns", "text"), [(400 * 86400 * g.NS_PER_S, "1y"), (86400 * g.NS_PER_S, "1d"),
                                          (5400 * g.NS_PER_S, "1h"), (90 * g.NS_PER_S, "1m"), (g.NS_PER_S, "1s"),
                                          (20 * g.NS_PER_MS, "20ms"), (1000, "1ms")])
def test_gtime_format_interval(ns, text):
    assert g.gtime_format_interval(ns) == text


@pytest.mark.parametrize(("value", "text"), [(300.0, "300"), (1036800.0, "1.0368e+06"), (0.02, "0.02"),
                                             (86400.0, "86400"), (1e-05, "1e-05"), (0.0001, "0.0001"), (1e6, "1e+06")])
def test_go_percent_v_of_a_float(value, text):
    assert g.go_format_float_v(value) == text


# ------------------------------------------------------------------ variables (variable-interpolation.test.ts)

def var(multi=False, include_all=False):
    return g.Variable("name1", multi=multi, include_all=include_all)


@pytest.mark.parametrize(("variable", "value", "expected"), [
    # Case 1: multi-value enabled, single value selected (the stored SqlDatasource.ts quotes it)
    (var(multi=True), "value1", "'value1'"), (var(multi=True), "O'Brien", "'O''Brien'"), (var(multi=True), 42, 42),
    # Case 2: multi-value enabled, multiple values selected
    (var(multi=True), ["value1", "value2", "value3"], "'value1','value2','value3'"),
    (var(multi=True), ["O'Brien", "Smith", "D'Angelo"], "'O''Brien','Smith','D''Angelo'"),
    (var(multi=True), [], ""),
    # Case 3 and 4: include All
    (var(include_all=True), "value1", "'value1'"), (var(include_all=True), 123, 123),
    (var(include_all=True), ["test'1", "test2", "test'3"], "'test''1','test2','test''3'"),
    # Case 5: neither: only the quotes are doubled
    (var(), "value1", "value1"), (var(), "O'Brien", "O''Brien"), (var(), 999, 999), (var(), "", ""),
    # Case 6 to 8: both
    (var(True, True), "value1", "'value1'"), (var(True, True), ["it's", "can't", "won't"], "'it''s','can''t','won''t'"),
    (var(True, True), ["value1"], "'value1'"), (var(True, True), ["a", "b'c", "d"], "'a','b''c','d'"),
])
def test_sql_interpolate_variable(variable, value, expected):
    assert g.sql_interpolate_variable(value, variable) == expected


def test_the_announced_general_fix_leaves_single_strings_unquoted():
    assert g.sql_interpolate_variable("O'Brien", var(multi=True), quote_single_strings=False) == "O''Brien"


def site_device_variables(site_value, device_value, all_value=None) -> dict:
    return {"site": g.Variable("site", multi=True, include_all=True, options=["LAB", "O'HARE"], value=site_value,
                               all_value=all_value),
            "device": g.Variable("device", options=["AA:BB"], value=device_value)}


@pytest.mark.parametrize(("sql", "site", "expected"), [
    ("site_id IN ($site)", ["LAB"], "site_id IN ('LAB')"),
    ("site_id IN (${site})", ["LAB", "O'HARE"], "site_id IN ('LAB','O''HARE')"),
    ("site_id IN ([[site]])", [g.ALL_VALUE], "site_id IN ('LAB','O''HARE')"),  # All: every option
    ("site_id IN (${site:sqlstring})", ["O'HARE"], "site_id IN ('O''HARE')"),
    ("'${site:csv}'", ["LAB", "O'HARE"], "'LAB,O'HARE'"),
    ("${site:raw}", ["LAB"], "LAB"),
    ("${site:text}", ["LAB", "O'HARE"], "LAB + O'HARE"),
    ("$sites $site_id $__timeFilter(time)", ["LAB"], "$sites $site_id $__timeFilter(time)"),  # not variables
])
def test_frontend_interpolation_forms(sql, site, expected):
    assert g.frontend_interpolate(sql, site_device_variables(site, "AA:BB")) == expected


def test_single_value_variable_is_inserted_with_doubled_quotes_only():
    assert g.frontend_interpolate("device_id = '$device'", site_device_variables(["LAB"], "AA:BB")) == \
        "device_id = 'AA:BB'"


def test_custom_all_value_is_inserted_as_is_and_interpolated_again():
    variables = site_device_variables(g.ALL_VALUE, "AA:BB", all_value="SELECT site_id FROM sites WHERE '$device' <> ''")
    assert g.frontend_interpolate("site_id IN ($site)", variables) == \
        "site_id IN (SELECT site_id FROM sites WHERE 'AA:BB' <> '')"
    assert g.frontend_interpolate("${site:text}", variables) == "All"


def test_calculate_interval_is_rounded_and_held_above_the_low_limit():
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert g.calculate_interval(now - timedelta(hours=6), now, 1000) == (60000, "1m")  # 21.6 s -> 20 s, but >= 1m
    assert g.calculate_interval(now - timedelta(hours=6), now, 1000, "10s") == (20000, "20s")
    assert g.calculate_interval(now - timedelta(days=365), now, 1000) == (21600000, "6h")
    assert g.calculate_interval(now - timedelta(days=7), now, 1000) == (600000, "10m")


def test_panel_query_expansion_end_to_end():
    span = g.time_range("6h", "now-6h", now=datetime(2025, 1, 1, 12, tzinfo=UTC))
    query = g.Query(file="x.json", kind="panel", title="t", ref_id="A", panel_type="timeseries",
                    raw_sql="SELECT $__timeGroupAlias(time, $__interval), avg(temperature) FROM sensor_data "
                            "WHERE $__timeFilter(time) AND device_id IN ($device) AND $__interval_ms > 0 GROUP BY 1")
    variables = {"device": g.Variable("device", multi=True, options=["A", "B"], value=["A", "B"])}
    assert g.expand_panel_query(query, variables, span) == (
        "SELECT time_bucket('60.000s',time) AS \"time\", avg(temperature) FROM sensor_data "
        "WHERE time BETWEEN '2025-01-01T06:00:00Z' AND '2025-01-01T12:00:00Z' AND device_id IN ('A','B') "
        "AND 60000 > 0 GROUP BY 1")


def test_relative_time_ranges():
    now = datetime(2024, 3, 31, 10, tzinfo=UTC)
    assert g.parse_relative("now-6h", now) == datetime(2024, 3, 31, 4, tzinfo=UTC)
    assert g.parse_relative("now-1M", now) == datetime(2024, 2, 29, 10, tzinfo=UTC)  # clamped, like moment
    assert g.parse_relative("now-1y", now) == datetime(2023, 3, 31, 10, tzinfo=UTC)
    with pytest.raises(ValueError):
        g.parse_relative("now/d", now)


# ------------------------------------------------------------------ properties

def parse_literal_list(text: str) -> list[str] | None:
    """PostgreSQL (standard_conforming_strings on) reading `'a','b'`: the values, or None if it is not that."""
    values, i = [], 0
    while True:
        if i >= len(text) or text[i] != "'":
            return None
        i += 1
        value = []
        while True:
            if i >= len(text):
                return None
            if text[i] == "'":
                if text[i + 1: i + 2] == "'":
                    value.append("'")
                    i += 2
                    continue
                i += 1
                break
            value.append(text[i])
            i += 1
        values.append("".join(value))
        if i == len(text):
            return values
        if text[i] != ",":
            return None
        i += 1


SQL_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20)
UTC_MOMENTS = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))


# "$__all" is Grafana's own value for "All", never an option's: a selection of it means every option.
@given(st.lists(SQL_TEXT.filter(lambda v: v != g.ALL_VALUE), min_size=1, max_size=5))
def test_quoting_never_breaks_out_of_a_literal(values):
    multi = g.Variable("v", multi=True, options=values, value=values)
    assert parse_literal_list(g.frontend_interpolate("$v", {"v": multi})) == values
    assert parse_literal_list(g.frontend_interpolate("${v:sqlstring}", {"v": multi})) == \
        [v.replace('"', '\\"') for v in values]
    single = g.Variable("v", options=values, value=values[0])
    assert parse_literal_list("'" + g.frontend_interpolate("$v", {"v": single}) + "'") == [values[0]]


def test_singlequote_format_is_not_safe_for_postgresql():
    """${var:singlequote} escapes ' with a backslash, which PostgreSQL does not read as an escape: never use it."""
    variable = g.Variable("v", multi=True, options=["x'), ('y"], value=["x'), ('y"])
    assert parse_literal_list(g.frontend_interpolate("${v:singlequote}", {"v": variable})) != ["x'), ('y"]


@given(UTC_MOMENTS, st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)))
def test_any_time_range_gives_a_where_that_postgresql_reads_back(time_from, span):
    time_to = time_from + span
    sql = g.postgres_macros("WHERE $__timeFilter(time)", time_from, time_to, True)
    stamp = r"'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z)'"
    match = re.fullmatch(rf"WHERE time BETWEEN {stamp} AND {stamp}", sql)
    assert match, sql
    assert datetime.fromisoformat(match[1]) == time_from and datetime.fromisoformat(match[2]) == time_to
    assert not match[1].endswith("0Z") or "." not in match[1]  # no trailing zeros in the fraction
    assert g.postgres_macros("$__timeFrom() <= $__timeTo()", time_from, time_to) == f"'{match[1]}' <= '{match[2]}'"


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_time_group_buckets_are_the_interval_in_seconds(amount, unit):
    """(Beyond Go's largest duration, about 2,562,047 h, the interval is an error, as in Grafana.)"""
    seconds = amount * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    sql = g.postgres_macros(f"$__timeGroupAlias(time, '{amount}{unit}')", FROM, TO, True)
    match = re.fullmatch(r"time_bucket\('(\d+\.\d{3})s',time\) AS \"time\"", sql)
    assert match and abs(float(match[1]) - seconds) <= 0.0005 + 1e-9 * seconds, sql
    plain = g.postgres_macros(f"$__timeGroup(time, '{amount}{unit}')", FROM, TO, False)
    number = re.fullmatch(r"floor\(extract\(epoch from time\)/(\S+)\)\*(\S+)", plain)
    assert number and number[1] == number[2] and float(number[1]) == pytest.approx(seconds)


@given(st.floats(min_value=1e-9, max_value=1e15, allow_nan=False))
def test_go_float_format_round_trips(value):
    assert float(g.go_format_float_v(value)) == value


@given(st.integers(min_value=0, max_value=10**13), st.integers(min_value=0, max_value=10**13))
def test_round_interval_is_monotonic(a, b):
    low, high = sorted((a, b))
    assert g.round_interval(low) <= g.round_interval(high)


@settings(max_examples=200)
@given(st.integers(min_value=1, max_value=20 * 365 * 86400 * 1000))
def test_formatted_interval_never_exceeds_the_interval(ms):
    text = g.gtime_format_interval(ms * g.NS_PER_MS)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    parsed = g.gtime_parse_interval(text, now) if text[-1] in "dwMy" else g.go_parse_duration(text)
    assert 0 < parsed <= ms * g.NS_PER_MS + 366 * 86400 * g.NS_PER_S * (text.endswith("y"))


# ------------------------------------------------------------------ extraction

SAMPLE_DASHBOARD = {
    "uid": "d1", "title": "D", "time": {"from": "now-24h", "to": "now"},
    "panels": [
        {"type": "timeseries", "title": "top", "targets": [{"refId": "A", "rawSql": "SELECT 1", "format": "time_series",
                                                            "datasource": {"uid": DATASOURCE_UID}}]},
        {"type": "row", "title": "open row", "panels": []},
        {"type": "stat", "title": "after open row", "interval": "5m", "maxDataPoints": 100,
         "datasource": {"type": g.DATASOURCE_TYPE, "uid": DATASOURCE_UID},
         "targets": [{"refId": "A", "rawSql": "SELECT 2", "format": "table"},
                     {"refId": "B", "rawSql": "SELECT 3", "hide": True}]},
        {"type": "row", "title": "closed", "collapsed": True, "panels": [
            {"type": "table", "title": "inside",
             "targets": [{"refId": "C", "rawSql": "SELECT 4", "format": "table"}]}]},
        {"type": "text", "title": "no query"},
    ],
    "templating": {"list": [
        {"name": "site", "type": "query", "query": "SELECT site_id FROM sites", "multi": True, "includeAll": True},
        {"name": "device", "type": "query", "query": {"query": "SELECT device_id FROM devices", "refId": "X"}},
        {"name": "c", "type": "custom", "query": "a,b"},
    ]},
}


def test_extraction_finds_panels_in_rows_and_variables_with_their_origin(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(SAMPLE_DASHBOARD))
    dashboard = g.load_dashboard(path)
    found = {(q.kind, q.title, q.panel_type, q.ref_id): q for q in dashboard.queries}
    assert set(found) == {("panel", "top", "timeseries", "A"), ("panel", "after open row", "stat", "A"),
                          ("panel", "inside", "table", "C"), ("variable", "site", "variable", "site"),
                          ("variable", "device", "variable", "device")}
    assert found[("panel", "top", "timeseries", "A")].required == ["time"]
    stat = found[("panel", "after open row", "stat", "A")]
    assert stat.required == [] and stat.interval == "5m" and stat.max_data_points == 100
    assert stat.datasource_uid == DATASOURCE_UID
    assert found[("variable", "device", "variable", "device")].raw_sql == "SELECT device_id FROM devices"
    assert found[("panel", "top", "timeseries", "A")].name == "d1 / panel 'top' (timeseries) A"
    variables = g.variables_of(dashboard, {"site": ["S1", "S2", "S3"], "device": ["D1"]}, "all")
    assert variables["site"].get_value() == ["S1", "S2", "S3"] and variables["device"].get_value() == "D1"
    assert variables["c"].get_value() == "a"
    assert g.variables_of(dashboard, {"site": ["S1", "S2", "S3"]}, "multi")["site"].get_value() == ["S1", "S2"]


SAMPLE_RULES = {"apiVersion": 1, "groups": [{"orgId": 1, "name": "datayoti", "folder": "DataYoti", "interval": "1m",
                                             "rules": [{"uid": "datayoti-x", "title": "X", "condition": "C", "data": [
                                                 {"refId": "A", "datasourceUid": DATASOURCE_UID,
                                                  "relativeTimeRange": {"from": 900, "to": 0},
                                                  "model": {"rawSql": "SELECT 1 AS value", "format": "table"}},
                                                 {"refId": "C", "datasourceUid": "__expr__",
                                                  "model": {"type": "threshold", "expression": "A"}}]}]}]}


def test_alert_extraction_takes_the_postgresql_queries_only(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(SAMPLE_RULES))
    (query,) = g.load_alert_rules(path, DATASOURCE_UID)
    assert (query.rule_uid, query.ref_id, query.required, query.relative_from_s) == ("datayoti-x", "A", ["value"], 900)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert g.alert_range(query, now).time_from == now - timedelta(minutes=15)
    assert g.expand_alert_query(query, now) == "SELECT 1 AS value"


# ------------------------------------------------------------------ checks

def q(kind="panel", panel_type="timeseries", fmt="time_series"):
    return g.Query(file="f", kind=kind, title="t", ref_id="A", raw_sql="", panel_type=panel_type, format=fmt)


def test_checks_name_what_grafana_would_refuse():
    assert g.check_result(q(), [("time", "timestamptz"), ("temperature", "float8")]) == []
    assert "has no column named 'time'" in g.check_result(q(), [("bucket", "timestamptz"), ("v", "float8")])[0]
    assert g.check_result(q(), [("time", "timestamptz"), ("ok", "bool")])
    assert g.check_result(q(), [("time", "timestamptz"), ("device_id", "text"), ("v", "float8")], time_sorted=False)
    assert g.check_result(q(panel_type="stat", fmt="table"), [("n", "int8")]) == []
    assert g.check_result(q(panel_type="stat", fmt="table"), []) == ["returns no column"]
    alert = q(kind="alert", panel_type="alert", fmt="table")
    assert g.check_result(alert, [("device_id", "text"), ("value", "float8")], [["a", 1.0], ["b", 0.0]]) == []
    assert g.check_result(alert, [("device_id", "text"), ("value", "float8")], [["a", 1.0], ["a", 2.0]])
    assert g.check_result(alert, [("value", "float8"), ("other", "int4")])
    assert g.firing(alert, [("device_id", "text"), ("value", "float8")], [["a", 1.0], ["b", 0.0], ["c", None]]) == \
        [{"device_id": "a", "value": 1.0}]
    assert g.variable_options(["__text", "__value"], [["A", "a"], ["B", "b"]]) == ["a", "b"]
    assert g.variable_options(["x", "y"], [["1", "2"], ["1", None]]) == ["1", "2", ""]


# ------------------------------------------------------------------ the repository's own files, offline

def repository_queries() -> tuple[list[g.Dashboard], list[g.Query]]:
    if not DASHBOARDS.is_dir():
        pytest.skip("roles/grafana/files/dashboards is not there yet")
    dashboards = [g.load_dashboard(p) for p in sorted(DASHBOARDS.glob("*.json"))]
    rules = g.load_alert_rules(ALERTS, DATASOURCE_UID) if ALERTS.exists() else []
    return dashboards, rules


def test_every_dashboard_and_rule_has_queries_of_our_datasource():
    dashboards, rules = repository_queries()
    assert {d.uid for d in dashboards} == {"datayoti-iot-overview", "datayoti-sensor-metrics", "datayoti-system-health"}
    for dashboard in dashboards:
        panels = [q for q in dashboard.queries if q.kind == "panel"]
        assert panels, dashboard.file
        for query in dashboard.queries:
            assert query.datasource_uid in (DATASOURCE_UID, None), query.name
            assert query.raw_sql.strip(), query.name
    assert rules, "no alert rule queries the PostgreSQL datasource"
    by_rule: dict[str, list[str]] = {}
    for rule in rules:
        by_rule.setdefault(rule.rule_uid, []).append(rule.ref_id)
    assert all("A" in refs for refs in by_rule.values()), by_rule


@pytest.mark.parametrize("raw_from", ["now-6h", "now-7d", "now-90d", "now-1y"])
def test_every_query_expands_without_a_macro_error_for_every_range_and_choice(raw_from):
    dashboards, rules = repository_queries()
    now = datetime(2025, 6, 1, 12, tzinfo=UTC)
    span = g.time_range(raw_from, raw_from, now=now)
    for dashboard in dashboards:
        for choice in ("single", "multi", "all"):
            options = {v["name"]: ["A'1", "B"] for v in dashboard.variables}
            variables = g.variables_of(dashboard, options, choice)
            for query in dashboard.queries:
                sql = g.expand_panel_query(query, variables, span)
                leftover = re.findall(r"\$\{?\w+|\[\[\w+", sql)
                assert not leftover, f"{query.name}: {leftover} left in {sql}"
    for rule in rules:
        sql = g.expand_alert_query(rule, now)
        assert not re.findall(r"\$\{?\w+|\[\[\w+", sql), f"{rule.name}: {sql}"
