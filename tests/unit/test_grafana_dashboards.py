"""The Grafana dashboards and alert rules that roles/grafana/src/datayoti_dashboards.py generates.

- the committed files are what the generator writes now;
- every dashboard validates against the JSON schema Grafana ships in grafana-foundation-sdk (tests/grafana_schema/,
  see its README), panel options and custom field config against the panel plugins' schemas;
- the alert rules file uses only the fields Grafana's file provisioning reads for alert rules;
- uids are unique and short enough, every target queries the DataYoti datasource;
- the thresholds in the panels and in the alert rules are the generator's one table;
- the rollup tiers cover every time range exactly once.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "grafana"
GENERATOR = ROLE / "src" / "datayoti_dashboards.py"
SCHEMAS = REPO / "tests" / "grafana_schema"


def _load_generator():
    spec = importlib.util.spec_from_file_location("datayoti_dashboards", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
DASHBOARD_FILES = sorted((ROLE / gen.DASHBOARD_DIR).glob("*.json"))
RULES_FILE = ROLE / gen.ALERTING_DIR / gen.ALERT_RULES_FILE


def dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in DASHBOARD_FILES}


def rules_document() -> dict:
    return yaml.safe_load(RULES_FILE.read_text())


def rules() -> list[dict]:
    return [r for g in rules_document()["groups"] for r in g["rules"]]


def panels(doc: dict) -> list[dict]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for panel in doc.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def query_panels(doc: dict) -> list[dict]:
    return [p for p in panels(doc) if p["type"] != "row"]


# --- (a) up to date ---------------------------------------------------------------------------------------------

def test_generated_files_are_up_to_date(tmp_path):
    gen.write(tmp_path)
    expected = {p.relative_to(tmp_path).as_posix(): p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {rel: (ROLE / rel).read_text() if (ROLE / rel).is_file() else None for rel in expected}
    stale = sorted(rel for rel in expected if committed[rel] != expected[rel])
    assert not stale, f"stale generated files {stale}: run `make dashboards`"
    # and nothing generated is left over from an older generator
    on_disk = {p.relative_to(ROLE).as_posix() for d in (gen.DASHBOARD_DIR, gen.ALERTING_DIR)
               for p in (ROLE / d).glob("*") if p.is_file()}
    assert on_disk == set(expected)


def test_check_flag_reports_stale_files(tmp_path):
    gen.write(tmp_path)
    run = [sys.executable, str(GENERATOR), "--check", "--root", str(tmp_path)]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    target = tmp_path / gen.DASHBOARD_DIR / "iot-overview.json"
    target.write_text(target.read_text().replace("IoT Overview", "IoT Overview (edited by hand)"))
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 1 and "iot-overview.json" in result.stderr


def test_output_is_deterministic():
    assert gen.render() == gen.render()


# --- (b) Grafana's JSON schema ------------------------------------------------------------------------------------

def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.jsonschema.json").read_text())


# The SDK's generated JSON schema types two fields `object` that Grafana's own dashboard schema declares `_`
# (any value): MatcherConfig.options (`options?: _` in Grafana's kinds/dashboard CUE: a field name for the
# byName matcher) and DynamicConfigValue.value (`value?: _`: a unit is a string). The SDK's own override_by_name
# builder writes a string there. Only these two are relaxed; test_schema_relaxation_is_minimal proves it.
RELAXED = (("MatcherConfig", "options"), ("DynamicConfigValue", "value"))


def dashboard_schema() -> dict:
    relaxed = copy.deepcopy(schema("dashboard"))
    for definition, field in RELAXED:
        relaxed["definitions"][definition]["properties"][field] = {}
    return relaxed


def errors(validator_schema: dict, instance) -> list[str]:
    validator = jsonschema.Draft7Validator(validator_schema)
    return [f"{list(e.absolute_path)}: {e.message[:300]}" for e in validator.iter_errors(instance)]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_validates_against_grafana_schema(path):
    assert errors(dashboard_schema(), json.loads(path.read_text())) == []


def test_schema_relaxation_is_minimal():
    """With the unrelaxed schema, every error is a type error at one of the RELAXED fields, and nothing else."""
    strict = jsonschema.Draft7Validator(schema("dashboard"))
    seen = 0
    for path in DASHBOARD_FILES:
        doc = json.loads(path.read_text())
        for error in strict.iter_errors(doc):
            # panels[i] is oneOf [Panel, RowPanel]: judge it by the branch its type selects
            panel = doc["panels"][error.absolute_path[1]] if list(error.absolute_path)[:1] == ["panels"] else None
            branch = 1 if panel and panel["type"] == "row" else 0
            leaves = [c for c in error.context if c.relative_schema_path[0] == branch] if error.context else [error]
            for leaf in leaves:
                where = list(leaf.absolute_path)
                relaxed = (where[-2:] == ["matcher", "options"] or (where[-1] == "value" and "properties" in where))
                assert relaxed and leaf.validator == "type", (path.stem, where, leaf.message)
                seen += 1
    assert seen, "the strict schema accepts the dashboards: drop RELAXED"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_panel_options_validate_against_panel_schemas(path):
    problems = []
    for panel in query_panels(json.loads(path.read_text())):
        definitions = schema(panel["type"])["definitions"]
        options = {"$ref": "#/definitions/Options", "definitions": definitions}
        problems += [f"{panel['title']} options {e}" for e in errors(options, panel.get("options", {}))]
        if "FieldConfig" in definitions:
            custom = {"$ref": "#/definitions/FieldConfig", "definitions": definitions}
            problems += [f"{panel['title']} custom {e}"
                         for e in errors(custom, panel["fieldConfig"]["defaults"].get("custom", {}))]
    assert problems == []


# --- (c) the alert rules file: Grafana's documented provisioning fields --------------------------------------------
# "Use configuration files to provision alerting resources", Grafana 12/13:
# https://grafana.com/docs/grafana/latest/alerting/set-up/provision-alerting-resources/file-provisioning/
# (the fields are those of AlertRuleGroupV1, AlertRuleV1 and QueryV1 in Grafana's
# pkg/services/provisioning/alerting/rules_types.go, which reads the file).
FILE_FIELDS = {"apiVersion", "groups", "deleteRules"}
GROUP_FIELDS = {"orgId", "name", "folder", "interval", "rules"}
RULE_FIELDS = {"uid", "title", "condition", "data", "dashboardUid", "panelId", "noDataState", "execErrState", "for",
               "keepFiringFor", "missing_series_evals_to_resolve", "annotations", "labels", "isPaused",
               "notification_settings", "record"}
REQUIRED_RULE_FIELDS = {"uid", "title", "condition", "data", "for"}
QUERY_FIELDS = {"refId", "queryType", "relativeTimeRange", "datasourceUid", "model"}
TIME_RANGE_FIELDS = {"from", "to"}
NO_DATA_STATES = {"NoData", "Alerting", "OK", "KeepLast"}
EXEC_ERR_STATES = {"Error", "Alerting", "OK", "KeepLast"}
UID_MAX = 40
DURATION = re.compile(r"^(\d+[smhdw])+$")


def test_alert_rules_use_only_documented_fields():
    doc = rules_document()
    assert set(doc) <= FILE_FIELDS and doc["apiVersion"] == 1
    for group in doc["groups"]:
        assert set(group) <= GROUP_FIELDS and {"name", "folder", "interval", "rules"} <= set(group)
        assert DURATION.match(group["interval"])
        for rule in group["rules"]:
            assert set(rule) <= RULE_FIELDS, (rule["uid"], set(rule) - RULE_FIELDS)
            assert set(rule) >= REQUIRED_RULE_FIELDS, rule["uid"]
            assert rule["noDataState"] in NO_DATA_STATES and rule["execErrState"] in EXEC_ERR_STATES
            assert DURATION.match(rule["for"])
            assert rule["condition"] in {q["refId"] for q in rule["data"]}
            assert all(isinstance(v, str) for v in {**rule["labels"], **rule["annotations"]}.values())
            for query in rule["data"]:
                assert set(query) <= QUERY_FIELDS, (rule["uid"], set(query) - QUERY_FIELDS)
                assert set(query["relativeTimeRange"]) <= TIME_RANGE_FIELDS


def test_alert_rules_group_is_the_designed_one():
    (group,) = rules_document()["groups"]
    assert (group["name"], group["folder"], group["interval"], group["orgId"]) == ("datayoti", "DataYoti", "1m", 1)


def test_alert_rules_file_has_no_dollar():
    """Grafana expands environment variables ($NAME, ${NAME}) in provisioning files (labels, and braced ones in
    annotations): the rules use .Labels/.Values and a threshold expression instead of $labels and $A."""
    assert "$" not in RULES_FILE.read_text()


def test_uids_are_unique_and_short():
    uids = [r["uid"] for r in rules()] + [d["uid"] for d in dashboards().values()]
    assert len(uids) == len(set(uids))
    assert all(len(u) <= UID_MAX and re.fullmatch(r"[a-z0-9-]+", u) for u in uids), uids
    assert all(r["uid"].startswith("datayoti-") for r in rules())
    assert {d["uid"] for d in dashboards().values()} == {
        "datayoti-iot-overview", "datayoti-sensor-metrics", "datayoti-system-health"}


def test_alert_rule_conditions_follow_the_contract():
    """refId A: the SQL as a time series (`time`, label columns and one `value`); B: its last value; C: B > 0."""
    for rule in rules():
        queries = {q["refId"]: q for q in rule["data"]}
        assert set(queries) == {"A", "B", "C"} and rule["condition"] == "C", rule["uid"]
        model = queries["A"]["model"]
        assert (model["format"], model["editorMode"], model["refId"]) == ("time_series", "code", "A")
        assert re.search(r"\bAS value\b", model["rawSql"]), rule["uid"]
        assert model["rawSql"].startswith("SELECT now() AS time,"), rule["uid"]
        assert "$__" not in model["rawSql"]  # alert SQL uses now(), no dashboard macros
        reduce, threshold = queries["B"], queries["C"]
        assert reduce["datasourceUid"] == threshold["datasourceUid"] == "__expr__"
        assert (reduce["model"]["type"], reduce["model"]["expression"], reduce["model"]["reducer"]) == \
            ("reduce", "A", "last")
        assert threshold["model"]["type"] == "threshold" and threshold["model"]["expression"] == "B"
        (condition,) = threshold["model"]["conditions"]
        assert condition["evaluator"] == {"params": [0], "type": "gt"}
        assert set(rule["annotations"]) == {"summary", "description"}
        assert ".Values.A" not in str(rule["annotations"]), rule["uid"]  # A is a series; B holds the value


# --- (d) the datasource -------------------------------------------------------------------------------------------

def role_vars() -> dict:
    return yaml.safe_load((ROLE / "vars" / "main.yml").read_text())


def test_generator_names_agree_with_the_role():
    names = role_vars()
    assert names["__grafana_datasource_uid"] == gen.DATASOURCE_UID
    assert names["__grafana_folder_title"] == gen.FOLDER_TITLE
    # Alert rules are provisioned before dashboards and name their folder by title: one folder only if the
    # dashboards' provider finds it by title too.
    assert "__grafana_folder_uid" not in names


def test_every_target_queries_the_datayoti_datasource():
    expected = {"type": "grafana-postgresql-datasource", "uid": role_vars()["__grafana_datasource_uid"]}
    for stem, doc in dashboards().items():
        for panel in query_panels(doc):
            assert panel["datasource"] == expected, (stem, panel["title"])
            assert panel["targets"], (stem, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"] == expected, (stem, panel["title"])
                assert target["rawSql"].strip() and target["editorMode"] == "code"
        for variable in doc.get("templating", {}).get("list", []):
            assert variable["datasource"] == expected, (stem, variable["name"])
    for rule in rules():
        (query,) = [q for q in rule["data"] if q["refId"] == "A"]
        assert query["datasourceUid"] == expected["uid"] and query["model"]["datasource"] == expected


def test_time_series_panels_return_a_time_column_and_tables_named_columns():
    for stem, doc in dashboards().items():
        for panel in query_panels(doc):
            for target in panel["targets"]:
                sql = target["rawSql"]
                if panel["type"] == "timeseries":
                    assert target["format"] == "time_series", (stem, panel["title"])
                    assert "$__timeGroupAlias(" in sql or re.search(r'AS "?time"?\b', sql), (stem, panel["title"])
                else:
                    assert target["format"] == "table", (stem, panel["title"])
                    assert "SELECT *" not in sql


@pytest.mark.parametrize("stem", ["sensor-metrics", "system-health"])
def test_site_and_device_variables(stem):
    variables = {v["name"]: v for v in dashboards()[stem]["templating"]["list"]}
    assert set(variables) == {"site", "device"}
    for variable in variables.values():
        assert variable["type"] == "query" and variable["multi"] and variable["includeAll"]
        # All is a subquery: `IN ($x)` is valid SQL even when the variable has no option (no device yet)
        assert variable["allValue"].startswith("SELECT ") and "$" not in variable["allValue"]
    assert "$site" in variables["device"]["query"] and "$" not in variables["site"]["query"]


# --- (e) thresholds live once -------------------------------------------------------------------------------------

def panel_by_title(stem: str, title: str) -> dict:
    (panel,) = [p for p in query_panels(dashboards()[stem]) if p["title"] == title]
    return panel


@pytest.mark.parametrize("model", sorted(gen.MODEL_THRESHOLDS))
@pytest.mark.parametrize("metric", [m.column for m in gen.METRICS])
def test_panel_and_alert_thresholds_come_from_the_same_table(model, metric):
    band = gen.MODEL_THRESHOLDS[model][metric]
    title = {m.column: m.title for m in gen.METRICS}[metric]
    steps = panel_by_title("sensor-metrics", f"{title} ({model})")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, band.low, band.high]
    (rule,) = [r for r in rules() if r["uid"] == f"datayoti-{metric}-range"]
    sql = rule["data"][0]["model"]["rawSql"]
    assert f"('{model}', {band.low:g}::float8, {band.high:g}::float8)" in sql


def test_dht11_numbers_are_where_expected():
    """The design's DHT11 set, literally: 2..45 °C and 25..85 % in the panels and in the rules."""
    assert gen.MODEL_THRESHOLDS["DHT11"] == {"temperature": gen.Band(2, 45), "humidity": gen.Band(25, 85)}
    assert gen.MODEL_THRESHOLDS["DHT22"] == {"temperature": gen.Band(-10, 45), "humidity": gen.Band(10, 90)}
    temperature_rule = next(r for r in rules() if r["uid"] == "datayoti-temperature-range")
    assert "('DHT11', 2::float8, 45::float8)" in temperature_rule["data"][0]["model"]["rawSql"]
    steps = panel_by_title("sensor-metrics", "Humidity (DHT11)")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 25, 85]


def test_pipeline_thresholds_are_shared():
    sql = {r["uid"]: r["data"][0]["model"]["rawSql"] for r in rules()}
    assert f"a.backlog > {gen.BACKLOG_MAX}" in sql["datayoti-backlog"]
    backlog = panel_by_title("system-health", "Backlog")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert backlog[-1]["value"] == gen.BACKLOG_MAX
    card = panel_by_title("system-health", "SD card writes per hour")["fieldConfig"]["defaults"]["thresholds"]
    assert card["steps"][-1]["value"] == gen.CARD_WRITES_MAX_MB_PER_HOUR * gen.MB
    assert f"> {gen.CARD_WRITES_MAX_MB_PER_HOUR} * {gen.MB}" in sql["datayoti-card-writes"]
    assert f"< {gen.DISK_FREE_MIN_PERCENT / 100:g} * a.disk_total_bytes" in sql["datayoti-disk-free"]
    assert f">= {gen.REJECT_MIN_COUNT} AND" in sql["datayoti-reject-rate"]
    silent = int(gen.SILENT_AFTER.total_seconds())
    assert f"interval '{silent} seconds'" in sql["datayoti-silent-sensor"] and silent == 210


def test_model_sql_matches_the_device_types():
    case = gen.model_of("d")
    for model, types in gen.MODEL_DEVICE_TYPES.items():
        for device_type in types:
            assert f"'{device_type}'" in case or model == gen.DEFAULT_MODEL
    assert case.endswith(f"ELSE '{gen.DEFAULT_MODEL}' END")


# --- the rollup tiers ---------------------------------------------------------------------------------------------

@given(st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=3650)), st.integers(0, 5000))
def test_exactly_one_rollup_tier_serves_any_range_and_selection(width, devices):
    serving = [t for t in gen.ROLLUP_TIERS if gen.tier_serves(t, width, devices)]
    assert len(serving) == 1
    tier = gen.rollup_tier(width, devices)
    assert tier is serving[0]
    # The finest tier within the budget; the coarsest when none is.
    assert gen.tier_rows(tier, width, devices) <= gen.ROWS_BUDGET or tier is gen.ROLLUP_TIERS[-1]
    finer = gen.ROLLUP_TIERS[:gen.ROLLUP_TIERS.index(tier)]
    assert all(gen.tier_rows(t, width, devices) > gen.ROWS_BUDGET for t in finer)


def test_the_tiers_a_user_sees():
    day, week, year = timedelta(days=1), timedelta(days=7), timedelta(days=365)
    names = lambda width, n: gen.rollup_tier(width, n).table  # noqa: E731
    assert names(day, 1) == names(6 * day, 1) == "sensor_data"
    assert names(week, 1) == "sensor_data_semi_hourly"
    assert names(day, 50) == "sensor_data_semi_hourly"
    assert names(timedelta(hours=3), 50) == "sensor_data"
    assert names(year, 1) == "sensor_data_hourly"
    assert names(year, 50) == "sensor_data_daily"


def test_tier_conditions_are_the_sql_of_the_same_rule():
    """Each UNION ALL branch's guard states in SQL what tier_serves states in Python."""
    sql = gen.metric_by_range("temperature", "DHT22")
    assert sql.count("\nUNION ALL\n") == len(gen.ROLLUP_TIERS) - 1
    for i, tier in enumerate(gen.ROLLUP_TIERS):
        condition = gen.tier_condition(tier)
        assert f"FROM {tier.table} r\nWHERE {condition}\n" in sql
        if i > 0:
            previous = gen.ROLLUP_TIERS[i - 1]
            assert f"/ {int(previous.bucket.total_seconds())} * {gen.SELECTED_COUNT} > {gen.ROWS_BUDGET}" in condition
        if i < len(gen.ROLLUP_TIERS) - 1:
            assert f"/ {int(tier.bucket.total_seconds())} * {gen.SELECTED_COUNT} <= {gen.ROWS_BUDGET}" in condition


def test_macro_calls_hold_no_parentheses():
    """Grafana's macro regex ends a macro's arguments at the first ')'."""
    texts = [t["rawSql"] for doc in dashboards().values() for p in query_panels(doc) for t in p["targets"]]
    for sql in texts:
        for match in re.finditer(r"\$__\w+\(([^)]*)\)", sql):
            assert "(" not in match[1], match[0]


def test_raw_only_panels_cap_their_range():
    for title, stem in (("Extra metrics", "sensor-metrics"), ("RSSI", "system-health"), ("Free heap", "system-health")):
        panel = panel_by_title(stem, title)
        assert gen.raw_range_cap("b.time").replace("b.time", "") in panel["targets"][0]["rawSql"].replace(
            "s.time", "").replace("b.time", "")
        assert gen.RAW_CAP_DESCRIPTION in panel["description"]
