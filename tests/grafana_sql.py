"""Every SQL query of the Grafana dashboards and alert rules, expanded exactly as Grafana expands it.

Three parts, each a port of Grafana's own code (read with the search tools; the commits are those of
the stored versions that were read):

1. **The backend's macros** (what Grafana's server does to `rawSql` before sending it to PostgreSQL):
   - grafana/grafana `pkg/tsdb/grafana-postgresql-datasource/sqleng/sql_engine.go`
     @ 043dd88a47944c35205994c4da317e100dc9b12e
     (`Interpolate`: the global substitutions `$__interval_ms`, `$__interval`, `$__unixEpochFrom()`,
     `$__unixEpochTo()`, in that order; `SetupFillmode`; `SQLMacroEngineBase.ReplaceAllStringSubmatchFunc`);
   - grafana/grafana `pkg/tsdb/grafana-postgresql-datasource/macros.go` @ 02ab314b81e2adc656bd7d08cc0533304a0037ff
     (same logic as @ 0577088076c3920f31aa0ca03cf8ac62e08f4d5b): `$__time`, `$__timeEpoch`, `$__timeFilter`,
     `$__timeFrom`, `$__timeTo`, `$__timeGroup` (TimescaleDB's `time_bucket` when `jsonData.timescaledb`),
     `$__timeGroupAlias`, `$__unixEpochFilter`, `$__unixEpochNano*`, `$__unixEpochGroup(Alias)`, the
     pre-5.3 `$__timeGroup(...),` alias rule, and the errors of missing arguments;
   - grafana/grafana-plugin-sdk-go `backend/gtime/gtime.go` @ 126b99e0f2e4a963b036c99fb41444c298fa306d
     (`ParseInterval`, `FormatInterval`), which uses Go's `time.ParseDuration`; Go's `time.RFC3339Nano`
     and `fmt`'s `%v` of a float64 are reproduced here too.
   Examples from `macros_test.go` @ e6c1350783598e70990ab4cc4dd719072c5cda33 are in tests/unit/test_grafana_sql.py.

2. **The frontend's variables** (what the browser does before sending the query):
   - grafana/scenes `packages/scenes/src/variables/constants.ts` @ 1034177b7002467f6ba8645154d809af46205d2e
     (`VARIABLE_REGEX`: `$var`, `[[var]]`, `[[var:fmt]]`, `${var}`, `${var:fmt}`);
   - grafana/scenes `.../interpolation/sceneInterpolator.ts` @ 0fac06ac33e50685c846463dbaaebc70e6fca155 (a
     variable that is not found is left as written; an explicit `:fmt` wins over the datasource's function);
   - grafana/scenes `.../interpolation/formatRegistry.ts` @ 06bf62dbfc08f066b5f5a55edb99b888a02d1b6e (`csv`,
     `sqlstring`, `singlequote`, `doublequote`, `raw`, `pipe`, `glob`, `json`, `text`);
   - grafana/scenes `.../variants/MultiValueVariable.ts` @ 000268153c319aa7ad75129d6c073d365aea836b (All: every
     option's value, or the custom `allValue` inserted as is and interpolated again);
   - grafana/grafana `packages/grafana-sql/src/datasource/SqlDatasource.ts` @ 053063638b1813ad0410acb053df940b175659d2
     (`interpolateVariable`: a string of a multi/include-All variable is quoted `'x'`, of any other variable
     only has its `'` doubled; a list becomes `'a','b'`; a number is left alone). NOTE: a later test
     (`variable-interpolation.test.ts` @ 2a14b0ed89dfeebe8adf2159e011fc724801cc0b) stops quoting a single
     *string* of a multi/include-All variable; a multi-value variable's value is a list in scenes, so only
     a single-value include-All variable would see the difference (`quote_single_strings=False`).
   - grafana/grafana `packages/grafana-data/src/datetime/rangeutil.ts` @ 0aff354e847331158a17a497ff48aa41b20e68b5
     (`calculateInterval`, `roundInterval`, `secondsToHms`, `intervalToMs`): `$__interval` of a panel, whose
     low limit is the panel's `interval` or the SQL datasource's `timeInterval || '1m'`.

3. **Extraction** of every query from the dashboards (panel targets, panels inside rows, template variables)
   and the alert rules (each `data[]` entry of the PostgreSQL datasource), with its origin and the columns
   its use requires, and **checks** of a query's result against those requirements (Grafana's
   `sqleng.processFrame`: a time series needs a column named exactly `time`; an alert's table needs one
   numeric column and unique label sets, https://grafana.com/docs/grafana/v12.4/alerting/examples/table-data.md).
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

DATASOURCE_TYPE = "grafana-postgresql-datasource"
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
MAX_INT64 = 2**63 - 1


class MacroError(ValueError):
    """What Grafana's macro engine answers instead of a query (the panel shows it as an error)."""


# ------------------------------------------------------------------ Go's formatting and parsing

def go_rfc3339nano(moment: datetime) -> str:
    """`t.UTC().Format(time.RFC3339Nano)`: no trailing zeros in the fraction, no fraction when zero."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_unix(moment: datetime) -> int:
    """`t.Unix()`: whole seconds, rounded down (also before 1970)."""
    return _unix_micros(moment) // 1_000_000


def go_unix_nano(moment: datetime) -> int:
    return _unix_micros(moment) * 1000


def _unix_micros(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def go_format_float_v(value: float) -> str:
    """`fmt.Sprintf("%v", float64)`: strconv.FormatFloat(f, 'g', -1, 64), the shortest digits that round-trip,
    in exponent form when exp < -4 || exp >= 6 ("if precision was the shortest possible, use precision 6"):
    300 -> "300", 1036800 -> "1.0368e+06", 0.02 -> "0.02".
    """
    if value == 0:
        return "0"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    sign = "-" if value < 0 else ""
    digits_tuple = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(str(d) for d in digits_tuple.digits)
    nd = len(digits)
    dp = nd + digits_tuple.exponent  # value = 0.<digits> x 10**dp
    exp = dp - 1
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if nd > 1 else "")
        return f"{sign}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= nd:
        return f"{sign}{digits}{'0' * (dp - nd)}"
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


GO_UNITS_NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": NS_PER_MS, "s": NS_PER_S,
               "m": 60 * NS_PER_S, "h": 3600 * NS_PER_S}


def go_parse_duration(text: str) -> int:
    """Go's `time.ParseDuration`, in nanoseconds: "300ms", "-1.5h", "2h45m"; units ns us µs ms s m h."""
    original, s, negative, total = text, text, False, 0
    if s[:1] in ("-", "+"):
        negative, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f'time: invalid duration "{original}"')
    while s:
        if not (s[0] == "." or s[0].isdigit()):
            raise ValueError(f'time: invalid duration "{original}"')
        match = re.match(r"([0-9]*)(?:\.([0-9]*))?", s)
        whole, fraction = match[1], match[2]
        if not whole and not fraction:
            raise ValueError(f'time: invalid duration "{original}"')
        s = s[match.end():]
        unit_text = re.match(r"[^0-9.]*", s)[0]
        s = s[len(unit_text):]
        if not unit_text:
            raise ValueError(f'time: missing unit in duration "{original}"')
        if unit_text not in GO_UNITS_NS:
            raise ValueError(f'time: unknown unit "{unit_text}" in duration "{original}"')
        unit = GO_UNITS_NS[unit_text]
        value = int(whole or "0")
        if value > MAX_INT64 // unit:
            raise ValueError(f'time: invalid duration "{original}"')
        value *= unit
        if fraction:
            value += int(float(int(fraction)) * (float(unit) / float(10 ** len(fraction))))
        total += value
        if total > MAX_INT64:
            raise ValueError(f'time: invalid duration "{original}"')
    return -total if negative else total


def _go_add_date(moment: datetime, years: int = 0, months: int = 0, days: int = 0) -> datetime:
    """Go's `t.AddDate`: the month and day overflow into the next ones (Jan 31 + 1 month = Mar 3)."""
    month0 = moment.month - 1 + months
    year = moment.year + years + month0 // 12
    month = month0 % 12 + 1
    base = moment.replace(year=year, month=month, day=1)
    return base + timedelta(days=moment.day - 1 + days)


def gtime_parse_interval(text: str, now: datetime | None = None) -> int:
    """gtime.ParseInterval, in nanoseconds: d, w, M, y relative to now (UTC), anything else by ParseDuration."""
    match = re.fullmatch(r"(\d+)([dwMy])", text)
    if not match:
        return go_parse_duration(text)
    num, period = int(match[1]), match[2]
    now = (now or datetime.now(UTC)).astimezone(UTC)
    later = {"d": lambda: _go_add_date(now, days=num), "w": lambda: _go_add_date(now, days=num * 7),
             "M": lambda: _go_add_date(now, months=num), "y": lambda: _go_add_date(now, years=num)}[period]()
    delta = later - now
    return (delta.days * 86400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000


def gtime_format_interval(ns: int) -> str:
    """gtime.FormatInterval: the largest whole unit of y, d, h, m, s, ms (truncated); "1ms" below that."""
    for size, suffix in ((365 * 86400 * NS_PER_S, "y"), (86400 * NS_PER_S, "d"), (3600 * NS_PER_S, "h"),
                         (60 * NS_PER_S, "m"), (NS_PER_S, "s"), (NS_PER_MS, "ms")):
        if ns >= size:
            return f"{ns // size}{suffix}"
    return "1ms"


def duration_seconds(ns: int) -> float:
    """time.Duration.Seconds()."""
    sec, nsec = int(ns / NS_PER_S), ns - int(ns / NS_PER_S) * NS_PER_S
    return float(sec) + float(nsec) / 1e9


# ------------------------------------------------------------------ the backend: sqleng + macros.go

MACRO_CALL = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")


@dataclass
class FillMode:
    """What `sqleng.SetupFillmode` records in the query when $__timeGroup has a third argument."""
    interval_s: float
    mode: str
    value: float | None = None


def setup_fillmode(interval_ns: int, fillmode: str) -> FillMode:
    if fillmode == "NULL":
        return FillMode(duration_seconds(interval_ns), "null")
    if fillmode == "previous":
        return FillMode(duration_seconds(interval_ns), "previous")
    try:
        value = float(fillmode)  # strconv.ParseFloat
    except ValueError:
        raise MacroError(f"error parsing fill value {fillmode}") from None
    return FillMode(duration_seconds(interval_ns), "value", value)


def sqleng_interpolate(sql: str, time_from: datetime, time_to: datetime, interval_ns: int) -> str:
    """sqleng.Interpolate: the global substitutions, before the datasource's macros."""
    sql = sql.replace("$__interval_ms", str(int(interval_ns / NS_PER_MS)))
    sql = sql.replace("$__interval", gtime_format_interval(interval_ns))
    sql = sql.replace("$__unixEpochFrom()", str(go_unix(time_from)))
    return sql.replace("$__unixEpochTo()", str(go_unix(time_to)))


def postgres_macros(sql: str, time_from: datetime, time_to: datetime, timescaledb: bool = True,
                    fill: list[FillMode] | None = None, now: datetime | None = None) -> str:
    """postgresMacroEngine.Interpolate: every `$name(args)` is a macro; the first error wins."""
    errors: list[MacroError] = []

    def replace(match: re.Match) -> str:
        name, args_text = match[1], match[2]
        if name == "__timeGroup":
            # Pre-5.3 compatibility: a ',' right after the call (found at its first occurrence in the
            # original text) means the old form that also named the column.
            index = sql.find(match[0])
            if index >= 0:
                index += len(match[0])
                if len(sql) > index and sql[index] == ",":
                    name = "__timeGroupAlias"
        args = [arg.strip(" ") for arg in args_text.split(",")]
        try:
            return evaluate_macro(name, args, time_from, time_to, timescaledb, fill, now)
        except MacroError as exc:
            errors.append(exc)
            return "macro_error()"

    result = MACRO_CALL.sub(replace, sql)
    if errors:
        raise errors[0]
    return result


def _interval_arg(name: str, args: list[str], fill: list[FillMode] | None, now: datetime | None) -> int:
    if len(args) < 2:
        raise MacroError(f"macro {name} needs time column and interval and optional fill value")
    try:
        interval = gtime_parse_interval(args[1].strip("'"), now)
    except ValueError:
        raise MacroError(f"error parsing interval {args[1]}") from None
    if len(args) == 3:
        mode = setup_fillmode(interval, args[2])
        if fill is not None:
            fill.append(mode)
    return interval


def evaluate_macro(name: str, args: list[str], time_from: datetime, time_to: datetime, timescaledb: bool = True,
                   fill: list[FillMode] | None = None, now: datetime | None = None) -> str:
    """postgresMacroEngine.evaluateMacro. `args` is never empty: "" splits into [""] as in Go."""
    def column() -> str:
        if len(args) == 0:  # as in Go: unreachable, strings.Split never returns an empty slice
            raise MacroError(f"missing time column argument for macro {name}")
        return args[0]

    if name == "__time":
        return f'{column()} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {column()}) as "time"'
    if name == "__timeFilter":
        return f"{column()} BETWEEN '{go_rfc3339nano(time_from)}' AND '{go_rfc3339nano(time_to)}'"
    if name == "__timeFrom":
        return f"'{go_rfc3339nano(time_from)}'"
    if name == "__timeTo":
        return f"'{go_rfc3339nano(time_to)}'"
    if name == "__timeGroup":
        seconds = duration_seconds(_interval_arg(name, args, fill, now))
        if timescaledb:
            return f"time_bucket('{seconds:.3f}s',{args[0]})"
        return f"floor(extract(epoch from {args[0]})/{go_format_float_v(seconds)})*{go_format_float_v(seconds)}"
    if name == "__timeGroupAlias":
        return evaluate_macro("__timeGroup", args, time_from, time_to, timescaledb, fill, now) + ' AS "time"'
    if name == "__unixEpochFilter":
        col = column()
        return f"{col} >= {go_unix(time_from)} AND {col} <= {go_unix(time_to)}"
    if name == "__unixEpochNanoFilter":
        col = column()
        return f"{col} >= {go_unix_nano(time_from)} AND {col} <= {go_unix_nano(time_to)}"
    if name == "__unixEpochNanoFrom":
        return str(go_unix_nano(time_from))
    if name == "__unixEpochNanoTo":
        return str(go_unix_nano(time_to))
    if name == "__unixEpochGroup":
        seconds = duration_seconds(_interval_arg(name, args, fill, now))
        return f"floor(({args[0]})/{go_format_float_v(seconds)})*{go_format_float_v(seconds)}"
    if name == "__unixEpochGroupAlias":
        return evaluate_macro("__unixEpochGroup", args, time_from, time_to, timescaledb, fill, now) + ' AS "time"'
    raise MacroError(f'unknown macro "{name}"')


def backend_expand(sql: str, time_from: datetime, time_to: datetime, interval_ns: int = NS_PER_S,
                   timescaledb: bool = True, now: datetime | None = None) -> str:
    """What the PostgreSQL datasource sends to the database for `rawSql` (DataSourceHandler.executeQuery)."""
    return postgres_macros(sqleng_interpolate(sql, time_from, time_to, interval_ns), time_from, time_to,
                           timescaledb, now=now)


# ------------------------------------------------------------------ the frontend: variables and $__interval

VARIABLE_REGEX = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")
ALL_VALUE = "$__all"


@dataclass
class Variable:
    """A dashboard variable as the interpolation sees it."""
    name: str
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    options: list[str] = field(default_factory=list)
    value: str | list[str] = ""  # the selection; ALL_VALUE (or [ALL_VALUE]) for All

    def is_all(self) -> bool:
        return self.value == ALL_VALUE or (isinstance(self.value, list) and self.value[:1] == [ALL_VALUE])

    def get_value(self):
        """MultiValueVariable.getValue: All is every option's value, or the custom all value (unformatted)."""
        if self.is_all():
            if self.all_value:
                return CustomAllValue(self.all_value)
            return list(self.options)
        return self.value


@dataclass
class CustomAllValue:
    value: str


@dataclass
class ScopedVar:
    """A scoped variable (`__interval`, `__interval_ms`): no multi, no All."""
    name: str
    value: str | int

    multi = False
    include_all = False

    def get_value(self):
        return self.value


def quote_literal(value: str) -> str:
    """PostgresQueryModel.quoteLiteral."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_interpolate_variable(value, variable, quote_single_strings: bool = True):
    """SqlDatasource.interpolateVariable."""
    if isinstance(value, str):
        if (variable.multi or variable.include_all) and quote_single_strings:
            return quote_literal(value)
        return value.replace("'", "''")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    if isinstance(value, list):
        return ",".join(quote_literal(v) for v in value)
    return value


def _js_string(value) -> str:
    if isinstance(value, list):
        return ",".join(_js_string(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sqlstring(value) -> str:
    def one(v) -> str:
        return "'" + re.sub(r"'|\"", lambda m: {"'": "''", '"': '\\"'}[m[0]], _js_string(v)) + "'"
    return ",".join(one(v) for v in value) if isinstance(value, list) else one(value)


FORMATS: dict[str, Callable] = {
    "raw": lambda value: _js_string(value),
    "csv": lambda value: value if isinstance(value, str) else _js_string(value),
    "pipe": lambda value: "|".join(map(_js_string, value)) if isinstance(value, list) else _js_string(value),
    "glob": lambda value: "{" + ",".join(map(_js_string, value)) + "}" if isinstance(value, list) and len(value) > 1
    else _js_string(value),
    "json": lambda value: value if isinstance(value, str) else json.dumps(value, separators=(",", ":")),
    "sqlstring": _sqlstring,
    "singlequote": lambda value: ",".join("'" + _js_string(v).replace("'", "\\'") + "'" for v in value)
    if isinstance(value, list) else "'" + _js_string(value).replace("'", "\\'") + "'",
    "doublequote": lambda value: ",".join('"' + _js_string(v).replace('"', '\\"') + '"' for v in value)
    if isinstance(value, list) else '"' + _js_string(value).replace('"', '\\"') + '"',
}


def frontend_interpolate(sql: str, variables: dict[str, Variable | ScopedVar], quote_single_strings: bool = True
                         ) -> str:
    """sceneInterpolator with the SQL datasource's interpolateVariable as the default format."""
    def replace(match: re.Match) -> str:
        name = match[1] or match[2] or match[4]
        fmt = match[3] or match[6]
        variable = variables.get(name)
        if variable is None:
            return match[0]
        value = variable.get_value()
        if value is None:
            return ""
        if isinstance(value, CustomAllValue):
            if fmt == "text":
                return "All"
            return frontend_interpolate(value.value, variables, quote_single_strings)
        if fmt:
            name_only = fmt.split(":")[0]
            if name_only == "text":
                return _js_string(value) if not isinstance(value, list) else " + ".join(map(_js_string, value))
            formatter = FORMATS.get(name_only, FORMATS["glob"])
            return formatter(value)
        return _js_string(sql_interpolate_variable(value, variable, quote_single_strings))

    return VARIABLE_REGEX.sub(replace, sql)


def round_interval(ms: float) -> int:
    """rangeutil.roundInterval."""
    steps = [(10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
             (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
             (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
             (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
             (16200000, 10800000), (32400000, 21600000), (86400000, 43200000), (604800000, 86400000),
             (1814400000, 604800000), (3628800000, 2592000000)]
    for below, rounded in steps:
        if ms < below:
            return rounded
    return 31536000000


def seconds_to_hms(seconds: float) -> str:
    """rangeutil.secondsToHms: the largest non-zero of years, days, hours, minutes, seconds, else ms."""
    parts = [("y", math.floor(seconds / 31536000)),
             ("d", math.floor((seconds % 31536000) / 86400)),
             ("h", math.floor(((seconds % 31536000) % 86400) / 3600)),
             ("m", math.floor((((seconds % 31536000) % 86400) % 3600) / 60)),
             ("s", math.floor((((seconds % 31536000) % 86400) % 3600) % 60))]
    for suffix, whole in parts:
        if whole:
            return f"{whole}{suffix}"
    ms = math.floor(seconds * 1000.0)
    return f"{ms}ms" if ms else "less than a millisecond"


INTERVAL_UNITS_S = {"y": 31536000, "M": 2592000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}


def interval_to_ms(text: str) -> float:
    """rangeutil.intervalToMs (describeInterval): unit-less means seconds."""
    try:
        if float(text):
            return int(float(text)) * 1000
    except ValueError:
        pass
    match = re.match(r"^(-?\d+(?:\.\d+)?)(ms|[Mwdhmsy])", text)
    if not match:
        raise ValueError(f"Invalid interval string {text!r}")
    return INTERVAL_UNITS_S[match[2]] * 1000 * int(float(match[1]))


def calculate_interval(time_from: datetime, time_to: datetime, resolution: int, low_limit: str | None = "1m"
                       ) -> tuple[int, str]:
    """rangeutil.calculateInterval: (intervalMs, interval) of a panel `resolution` data points wide."""
    low_ms = interval_to_ms(low_limit) if low_limit else 1
    span_ms = (_unix_micros(time_to) - _unix_micros(time_from)) / 1000
    interval_ms = round_interval(span_ms / resolution)
    if low_ms > interval_ms:
        interval_ms = low_ms
    interval_ms = int(interval_ms)
    return interval_ms, seconds_to_hms(interval_ms / 1000)


# ------------------------------------------------------------------ time ranges

RELATIVE = re.compile(r"now(?:([-+])(\d+)([smhdwMy]))?")


def parse_relative(text: str, now: datetime) -> datetime:
    """A dashboard's `now`, `now-6h`, `now-7d`, `now-1y` (no rounding: the dashboards use none)."""
    match = RELATIVE.fullmatch(text)
    if not match:
        raise ValueError(f"unsupported time expression {text!r}")
    if not match[1]:
        return now
    amount = int(match[2]) * (-1 if match[1] == "-" else 1)
    unit = match[3]
    if unit == "M":
        return _moment_add_months(now, amount)
    if unit == "y":
        return _moment_add_months(now, 12 * amount)
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    return now + timedelta(seconds=seconds * amount)


def _moment_add_months(moment: datetime, months: int) -> datetime:
    """moment's add/subtract of months: the day is clamped to the end of the month."""
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class TimeRange:
    name: str
    time_from: datetime
    time_to: datetime


def time_range(name: str, raw_from: str, raw_to: str = "now", now: datetime | None = None) -> TimeRange:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # the browser's clock counts milliseconds
    return TimeRange(name, parse_relative(raw_from, now), parse_relative(raw_to, now))


# ------------------------------------------------------------------ extraction

@dataclass
class Query:
    """One SQL query of a dashboard or an alert rule, with where it comes from and what its use requires."""
    file: str
    kind: str  # "panel", "variable" or "alert"
    title: str  # panel title, variable name or rule title
    ref_id: str
    raw_sql: str
    panel_type: str = ""  # timeseries, stat, table, ... ; "variable"; "alert"
    format: str = "time_series"
    datasource_uid: str | None = None
    dashboard_uid: str = ""
    rule_uid: str = ""
    interval: str | None = None  # the panel's min interval
    max_data_points: int | None = None
    relative_from_s: int | None = None  # an alert query's relativeTimeRange
    relative_to_s: int | None = None
    interval_ms: int | None = None  # an alert query's model.intervalMs

    @property
    def name(self) -> str:
        where = self.dashboard_uid or self.rule_uid or Path(self.file).name
        return f"{where} / {self.kind} '{self.title}' ({self.panel_type or self.kind}) {self.ref_id}"

    @property
    def required(self) -> list[str]:
        """Columns the result must have, by name."""
        if self.kind == "alert":
            return ["value"] + (["time"] if self.format == "time_series" else [])
        if self.kind == "variable":
            return []
        if self.panel_type in TIME_PANELS or self.format == "time_series":
            return ["time"]
        return []


TIME_PANELS = {"timeseries", "graph", "barchart-time", "state-timeline", "status-history", "heatmap", "trend"}


@dataclass
class Dashboard:
    file: str
    uid: str
    title: str
    time_from: str
    time_to: str
    variables: list[dict]
    queries: list[Query]


def walk_panels(panels: Iterable[dict]) -> Iterable[dict]:
    """Every panel, those inside rows (collapsed rows keep theirs in `panels`) included."""
    for panel in panels or []:
        yield panel
        yield from walk_panels(panel.get("panels") or [])


def _uid(datasource) -> str | None:
    if isinstance(datasource, dict):
        return datasource.get("uid")
    return datasource if isinstance(datasource, str) else None


def load_dashboard(path: Path) -> Dashboard:
    doc = json.loads(Path(path).read_text())
    doc = doc.get("dashboard", doc)
    uid = doc.get("uid", "")
    queries: list[Query] = []
    for panel in walk_panels(doc.get("panels", [])):
        if panel.get("type") == "row":
            continue
        for target in panel.get("targets") or []:
            if target.get("hide") or "rawSql" not in target:
                continue
            queries.append(Query(
                file=str(path), kind="panel", title=panel.get("title", ""), ref_id=target.get("refId", "A"),
                raw_sql=target["rawSql"], panel_type=panel.get("type", ""), format=target.get("format", "time_series"),
                datasource_uid=_uid(target.get("datasource")) or _uid(panel.get("datasource")), dashboard_uid=uid,
                interval=panel.get("interval") or None, max_data_points=panel.get("maxDataPoints")))
    variables = list(doc.get("templating", {}).get("list", []))
    for var in variables:
        if var.get("type") != "query":
            continue
        query = var.get("query")
        sql = query.get("query", query.get("rawSql")) if isinstance(query, dict) else query
        if not sql:
            continue
        queries.append(Query(file=str(path), kind="variable", title=var["name"], ref_id=var["name"], raw_sql=sql,
                             panel_type="variable", format="table", datasource_uid=_uid(var.get("datasource")),
                             dashboard_uid=uid))
    time = doc.get("time", {})
    return Dashboard(str(path), uid, doc.get("title", ""), time.get("from", "now-6h"), time.get("to", "now"),
                     variables, queries)


def load_alert_rules(path: Path, datasource_uid: str) -> list[Query]:
    """Every data[] query of the PostgreSQL datasource in a Grafana alerting provisioning file."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    queries = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            for data in rule.get("data", []):
                if data.get("datasourceUid") != datasource_uid:
                    continue
                model = data.get("model", {})
                relative = data.get("relativeTimeRange", {})
                queries.append(Query(
                    file=str(path), kind="alert", title=rule.get("title", ""), ref_id=data.get("refId", ""),
                    raw_sql=model.get("rawSql", ""), panel_type="alert", format=model.get("format", "time_series"),
                    datasource_uid=datasource_uid, rule_uid=rule.get("uid", ""),
                    relative_from_s=relative.get("from", 600), relative_to_s=relative.get("to", 0),
                    interval_ms=model.get("intervalMs", 1000)))
    return queries


# ------------------------------------------------------------------ expansion

def variables_of(dashboard: Dashboard, options: dict[str, list[str]], choice: str) -> dict[str, Variable]:
    """Each variable of `dashboard` with a selection: "single" (first option), "multi" (the first two, or
    one when the variable is single-valued) or "all" (All when it has it, else the first option)."""
    result = {}
    for var in dashboard.variables:
        name, kind = var["name"], var.get("type")
        if kind in ("constant", "textbox"):
            text = var.get("query", "")
            result[name] = Variable(name, options=[text], value=text)
            continue
        opts = list(options.get(name) or _static_options(var))
        multi, include_all = bool(var.get("multi")), bool(var.get("includeAll"))
        variable = Variable(name, multi=multi, include_all=include_all, all_value=var.get("allValue") or None,
                            options=opts)
        if choice == "all" and include_all:
            variable.value = [ALL_VALUE] if multi else ALL_VALUE
        elif choice == "multi" and multi:
            variable.value = opts[:2]
        else:
            variable.value = opts[:1] if multi else (opts[0] if opts else "")
        result[name] = variable
    return result


def resolve_variables(dashboard: Dashboard, choice: str, span: TimeRange, run: Callable[[Query, str], dict]
                      ) -> dict[str, Variable]:
    """The variables as the dashboard loads them: each query variable's query runs (`run(query, sql)` ->
    {"ok", "columns": [[name, type]], "rows"}) with the variables before it already chosen."""
    options: dict[str, list[str]] = {}
    by_name = {q.title: q for q in dashboard.queries if q.kind == "variable"}
    for var in dashboard.variables:
        query = by_name.get(var["name"])
        if query is None:
            continue
        result = run(query, expand_panel_query(query, variables_of(dashboard, options, choice), span))
        if result.get("ok"):
            options[var["name"]] = variable_options([c[0] for c in result["columns"]], result["rows"])
    return variables_of(dashboard, options, choice)


def _static_options(var: dict) -> list[str]:
    if var.get("type") in ("custom", "interval"):
        query = var.get("query", "")
        return [part.strip() for part in re.split(r"(?<!\\),", query) if part.strip()]
    return [o.get("value") for o in var.get("options", []) if o.get("value") not in (None, ALL_VALUE)]


def expand_panel_query(query: Query, variables: dict[str, Variable], span: TimeRange, resolution: int = 1000,
                       datasource_interval: str | None = None, quote_single_strings: bool = True) -> str:
    """Browser then server: what PostgreSQL receives for a panel or variable query over `span`.

    `resolution` is the panel's maxDataPoints, else its width in pixels (about 1000 for a wide panel).
    """
    scoped: dict[str, Variable | ScopedVar] = dict(variables)
    low_limit = query.interval or datasource_interval or "1m"  # SqlDatasource: timeInterval || '1m'
    interval_ms, interval = calculate_interval(span.time_from, span.time_to, query.max_data_points or resolution,
                                               low_limit)
    if query.kind != "variable":
        scoped["__interval"] = ScopedVar("__interval", interval)
        scoped["__interval_ms"] = ScopedVar("__interval_ms", interval_ms)
    scoped["__from"] = ScopedVar("__from", _unix_micros(span.time_from) // 1000)
    scoped["__to"] = ScopedVar("__to", _unix_micros(span.time_to) // 1000)
    sql = frontend_interpolate(query.raw_sql, scoped, quote_single_strings)
    backend_interval = interval_ms * NS_PER_MS if query.kind != "variable" else NS_PER_S
    return backend_expand(sql, span.time_from, span.time_to, backend_interval, timescaledb=True, now=span.time_to)


def alert_range(query: Query, now: datetime) -> TimeRange:
    return TimeRange("alert", now - timedelta(seconds=query.relative_from_s or 0),
                     now - timedelta(seconds=query.relative_to_s or 0))


def expand_alert_query(query: Query, now: datetime) -> str:
    """The server alone (no browser, no dashboard variables): what PostgreSQL receives at evaluation."""
    span = alert_range(query, now)
    return backend_expand(query.raw_sql, span.time_from, span.time_to, (query.interval_ms or 1000) * NS_PER_MS,
                          timescaledb=True, now=now)


# ------------------------------------------------------------------ checking a result

NUMERIC_TYPES = {"int2", "int4", "int8", "float4", "float8", "numeric"}
TIME_TYPES = {"timestamptz", "timestamp", "date"}
NOT_A_VALUE_TYPES = {"bool", "json", "jsonb"}


def variable_options(columns: list[str], rows: list[list]) -> list[str]:
    """ResponseParser.transformMetricFindResponse: __text/__value pairs, else every value of every column."""
    if "__value" in columns:
        index = columns.index("__value")
        values = [row[index] for row in rows]
    else:
        values = [cell for row in rows for cell in row]
    seen, result = set(), []
    for value in values:
        text = "" if value is None else str(value)
        if text not in seen:
            seen.add(text)
            result.append(text)
    return result


def check_result(query: Query, columns: list[tuple[str, str]], rows: list[list] | None = None,
                 time_sorted: bool | None = None) -> list[str]:
    """What Grafana would refuse, or show wrongly, in this result: [] when it is fine.

    `columns` are (name, PostgreSQL type name); `rows` (optional) the rows or a prefix of them; `time_sorted`
    whether the `time` column ascends over all the rows.
    """
    names = [name for name, _ in columns]
    types = dict(columns)
    problems = []
    if not columns:
        problems.append("returns no column")
    for needed in query.required:
        if needed not in names:
            problems.append(f"has no column named {needed!r} (columns: {', '.join(names) or 'none'})")
    if query.kind == "variable" and ("__text" in names) != ("__value" in names) and len(names) > 1:
        problems.append("names only one of __text/__value")
    if query.format == "time_series" and "time" in names:
        if types["time"] not in TIME_TYPES | NUMERIC_TYPES:
            problems.append(f"its time column is {types['time']}, not a time or an epoch")
        for name, kind in columns:
            if name not in ("time", "metric") and kind in NOT_A_VALUE_TYPES:
                problems.append(f"column {name!r} is {kind}: a time series value must be a number or a label")
        labels = [n for n, k in columns if n != "time" and k not in NUMERIC_TYPES | TIME_TYPES]
        if labels and time_sorted is False:
            problems.append("a long time series (with label columns) that is not sorted by time ascending")
    if query.kind == "alert" and query.format == "table" and "value" in names:
        numeric = [n for n, k in columns if k in NUMERIC_TYPES]
        if numeric != ["value"]:
            problems.append(f"an alert table needs exactly one numeric column, 'value'; it has {numeric}")
        if types.get("value") not in NUMERIC_TYPES:
            problems.append(f"'value' is {types.get('value')}, not a number")
        if rows is not None:
            label_index = [i for i, n in enumerate(names) if n != "value"]
            sets = [tuple(row[i] for i in label_index) for row in rows]
            if len(set(sets)) != len(sets):
                problems.append("two rows have the same labels: each alert instance needs its own")
    return problems


def firing(query: Query, columns: list[tuple[str, str]], rows: list[list]) -> list[dict]:
    """The rows whose value is > 0 (the rules' threshold `C: A > 0`), as {column: value}."""
    names = [name for name, _ in columns]
    if "value" not in names:
        return []
    index = names.index("value")
    return [dict(zip(names, row, strict=True)) for row in rows if row[index] is not None and float(row[index]) > 0]
