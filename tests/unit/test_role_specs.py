"""Every role's defaults, argument specs, private vars and README agree (pure YAML, no test bed).

For each role under roles/:
- every variable in defaults/main.yml carries the role's prefix, has a comment line directly above it,
  is documented in meta/argument_specs.yml (entry point `main`) with a description, and has the same
  default there (parsed values; a Jinja-templated default must be the same string);
- every option in argument_specs carries the prefix, has a description, and any default it states is
  the one defaults/main.yml sets;
- every private value in vars/main.yml is named __<role>_*;
- the role's README has a row for every variable, with the same default.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/defaults/main.yml"))
TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:")
# | `variable` | `default` | meaning |  (a code span holds no backtick; `\|` is a pipe inside it)
README_ROW = re.compile(r"^\|\s*`(?P<name>[A-Za-z0-9_]+)`\s*\|\s*`(?P<default>(?:[^`])*)`\s*\|", re.M)


def load(path: Path):
    return yaml.safe_load(path.read_text()) if path.exists() else None


def defaults_of(role: str) -> dict:
    return load(REPO / "roles" / role / "defaults" / "main.yml") or {}


def options_of(role: str) -> dict:
    specs = load(REPO / "roles" / role / "meta" / "argument_specs.yml") or {}
    return ((specs.get("argument_specs") or {}).get("main") or {}).get("options") or {}


def is_templated(value) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def same_default(spec_default, value) -> bool:
    """Parsed values compare equal, of the same kind (True is not 1); templates compare as strings."""
    if is_templated(value) or is_templated(spec_default):
        return isinstance(spec_default, str) and isinstance(value, str) and spec_default.strip() == value.strip()
    return type(spec_default) is type(value) and spec_default == value


def test_roles_are_found():
    assert {"base", "mosquitto", "timescaledb", "ingestor"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_defaults_carry_the_prefix_and_a_comment(role):
    path = REPO / "roles" / role / "defaults" / "main.yml"
    lines = path.read_text().splitlines()
    problems = []
    for number, line in enumerate(lines):
        match = TOP_LEVEL_KEY.match(line)
        if not match:
            continue
        name = match[1]
        if not name.startswith(f"{role}_"):
            problems.append(f"{name}: not prefixed with {role}_")
        if number == 0 or not lines[number - 1].lstrip().startswith("#"):
            problems.append(f"{name}: no comment on the line above it")
    assert set(defaults_of(role)) == {TOP_LEVEL_KEY.match(ln)[1] for ln in lines if TOP_LEVEL_KEY.match(ln)}, \
        "defaults/main.yml has keys this test cannot see line by line"
    assert not problems, f"{path.relative_to(REPO)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_documented_with_the_same_value(role):
    defaults, options = defaults_of(role), options_of(role)
    problems = []
    for name, value in defaults.items():
        option = options.get(name)
        if option is None:
            problems.append(f"{name}: missing from meta/argument_specs.yml")
            continue
        if not str(option.get("description") or "").strip():
            problems.append(f"{name}: no description in meta/argument_specs.yml")
        if "default" not in option:
            problems.append(f"{name}: argument_specs has no default; defaults/main.yml sets {value!r}")
        elif not same_default(option["default"], value):
            problems.append(f"{name}: argument_specs default {option['default']!r} != defaults/main.yml {value!r}")
    assert not problems, f"roles/{role}:\n" + "\n".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_every_documented_option_matches_the_defaults(role):
    defaults, options = defaults_of(role), options_of(role)
    assert options, f"roles/{role}/meta/argument_specs.yml documents no options"
    problems = []
    for name, option in options.items():
        if not name.startswith(f"{role}_"):
            problems.append(f"{name}: not prefixed with {role}_")
        if not str((option or {}).get("description") or "").strip():
            problems.append(f"{name}: no description")
        if "default" in (option or {}):
            if name not in defaults:
                problems.append(f"{name}: argument_specs states a default, but defaults/main.yml does not set it")
            elif not same_default(option["default"], defaults[name]):
                problems.append(f"{name}: argument_specs default {option['default']!r} != "
                                f"defaults/main.yml {defaults[name]!r}")
    assert not problems, f"roles/{role}:\n" + "\n".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_private_vars_are_double_underscore_prefixed(role):
    private = load(REPO / "roles" / role / "vars" / "main.yml") or {}
    wrong = [name for name in private if not name.startswith(f"__{role}_")]
    assert not wrong, f"roles/{role}/vars/main.yml: not named __{role}_*: {wrong}"


def readme_default_matches(text: str, value) -> bool:
    text = text.replace("\\|", "|").strip()
    if is_templated(value):
        expression = value.strip().removeprefix("{{").removesuffix("}}").strip()
        return text.strip("\"'").strip() in (value.strip(), expression)
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return same_default(parsed, value)


@pytest.mark.parametrize("role", ROLES)
def test_readme_documents_every_variable(role):
    readme = (REPO / "roles" / role / "README.md").read_text()
    rows = {m["name"]: m["default"] for m in README_ROW.finditer(readme)}
    problems = []
    for name, value in defaults_of(role).items():
        if name not in rows:
            problems.append(f"{name}: no row | `{name}` | `default` | meaning | in the README")
        elif not readme_default_matches(rows[name], value):
            problems.append(f"{name}: README default `{rows[name]}` != defaults/main.yml {value!r}")
    for name in rows:
        if name.startswith(f"{role}_") and name not in defaults_of(role) and name not in options_of(role):
            problems.append(f"{name}: in the README but not a variable of the role")
    assert not problems, f"roles/{role}/README.md:\n" + "\n".join(problems)


def test_the_appliance_role_installs_every_console_command_of_the_package():
    scripts = tomllib.loads((REPO / "ingestor" / "pyproject.toml").read_text())["project"]["scripts"]
    installed = yaml.safe_load((REPO / "roles" / "appliance" / "vars" / "main.yml").read_text())["__appliance_commands"]
    assert {c["name"]: f"{c['module']}:main" for c in installed} == scripts
