"""The card file that `datayoti firstboot` reads, and the image's Imager manifest: examples and properties."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import lzma

import pytest
from conftest import REPO
from datayoti_ingestor import devices, firstboot
from hypothesis import given, settings
from hypothesis import strategies as st

CARD_EXAMPLE = REPO / "image/stage-datayoti/00-datayoti/files/datayoti.toml"


def test_the_shipped_card_file_parses_to_no_sensor():
    card = firstboot.parse_card(CARD_EXAMPLE.read_text())
    assert card == firstboot.Card()


def test_sensors_take_the_card_site_unless_they_name_one():
    card = firstboot.parse_card('site = "greenhouse"\n'
                                '[[sensor]]\nmac = "24-6f-28-aa-bb-01"\nname = "north"\nmodel = "DHT11"\n'
                                '[[sensor]]\nmac = "24:6F:28:AA:BB:02"\nsite = "shed"\n')
    assert card.problems == ()
    assert card.sensors == (firstboot.CardSensor("24:6F:28:AA:BB:01", "greenhouse", "north", "DHT11"),
                            firstboot.CardSensor("24:6F:28:AA:BB:02", "shed", None, "DHT22"))


@pytest.mark.parametrize("entry, says", [
    ('mac = "nope"', "is not a MAC address"),
    ('name = "x"', "mac is missing"),
    ('mac = "24:6F:28:AA:BB:03"\nmodel = "DHT99"', "the model must be one of"),
    ('mac = "24:6F:28:AA:BB:03"\ncolour = "red"', "unknown key(s) 'colour'"),
    ('mac = 42', "mac must be a string"),
    ('mac = "24:6F:28:AA:BB:03"\nname = ""', "the device name must be 1 to"),
])
def test_a_bad_sensor_is_left_out_and_the_good_one_kept(entry, says):
    card = firstboot.parse_card(f'[[sensor]]\n{entry}\n[[sensor]]\nmac = "24:6F:28:AA:BB:09"\n', "card")
    assert [s.mac for s in card.sensors] == ["24:6F:28:AA:BB:09"]
    assert len(card.problems) == 1 and card.problems[0].startswith("card: sensor 1: ")
    assert says in card.problems[0] and card.problems[0].endswith("; left out")


def test_a_sensor_listed_twice_is_kept_once():
    card = firstboot.parse_card('[[sensor]]\nmac = "24:6F:28:AA:BB:01"\n[[sensor]]\nmac = "24-6F-28-AA-BB-01"\n')
    assert len(card.sensors) == 1 and "listed twice" in card.problems[0]


@pytest.mark.parametrize("text, says", [
    ("site = ", "not valid TOML"),
    ('sites = "x"', "unknown key(s) 'sites'"),
    ("site = 3", "site must be a string"),
    ('sensor = "x"', "sensors are [[sensor]] tables"),
    (f'site = "{"x" * 65}"', "the site name must be 1 to 64"),
])
def test_an_unreadable_card_is_one_clear_error(text, says):
    with pytest.raises(firstboot.CardError, match="^card: ") as caught:
        firstboot.parse_card(text, "card")
    assert says in str(caught.value) and "\n" not in str(caught.value)


toml_values = st.one_of(st.text(max_size=30), st.integers(), st.booleans(), st.lists(st.integers(), max_size=3))
sensor_tables = st.dictionaries(st.sampled_from(["mac", "site", "name", "model", "colour"]), toml_values, max_size=5)


def toml_string(value) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@settings(max_examples=300, deadline=None)
@given(st.lists(sensor_tables, max_size=6), st.text(max_size=200))
def test_any_card_parses_or_fails_with_one_line(tables, noise):
    """Whatever the file holds: CardError with one line, or sensors that are all valid plus one problem per
    entry left out."""
    text = "".join("[[sensor]]\n" + "".join(f"{k} = {toml_string(v)}\n" for k, v in t.items()) for t in tables)
    for candidate in (text, noise, text + noise):
        try:
            card = firstboot.parse_card(candidate, "card")
        except firstboot.CardError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("card: ")
            continue
        assert len(card.sensors) + len(card.problems) <= len(tables) + candidate.count("[[sensor]]")
        for sensor in card.sensors:
            assert devices.canonical_mac(sensor.mac) == sensor.mac and sensor.model in devices.MODELS
        assert len({s.mac for s in card.sensors}) == len(card.sensors)


# ------------------------------------------------------------------ the Imager manifest

def manifest_module():
    spec = importlib.util.spec_from_file_location("rpi_imager_manifest", REPO / "image/rpi_imager_manifest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_manifest_of_an_xz_image_has_imager_required_fields(tmp_path):
    tool = manifest_module()
    raw = b"\0" * 3_000_000 + b"DataYoti"
    image = tmp_path / "2026-11-24-datayoti-edge-datayoti.img.xz"
    image.write_bytes(lzma.compress(raw))
    assert tool.main([str(image), "--release-date", "2026-11-24"]) == 0
    written = json.loads((tmp_path / "2026-11-24-datayoti-edge-datayoti.rpi-imager-manifest").read_text())
    entry = written["os_list"][0]
    # rpi-imager doc/json-schema/os-list-schema.json: the fields each OS entry requires.
    for field in ("name", "description", "icon", "url", "extract_size", "extract_sha256", "image_download_size",
                  "release_date", "devices"):
        assert field in entry, field
    assert entry["extract_size"] == len(raw) and entry["extract_sha256"] == hashlib.sha256(raw).hexdigest()
    assert entry["image_download_size"] == image.stat().st_size
    assert entry["url"] == image.as_uri() and entry["init_format"] == "cloudinit-rpi"
    assert set(entry["devices"]) <= {"pi3-64bit", "pi4-64bit", "pi5-64bit"}
    # Imager's device step lists only imager.devices; each tag the image names must be offered there.
    offered = {tag for device in written["imager"]["devices"] for tag in device["tags"]}
    assert set(entry["devices"]) <= offered


def test_manifest_refuses_a_truncated_image_with_one_line(tmp_path, capsys):
    image = tmp_path / "x.img.xz"
    image.write_bytes(lzma.compress(b"\1" * 100_000)[:-40])
    assert manifest_module().main([str(image)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
