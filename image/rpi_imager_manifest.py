#!/usr/bin/env python3
"""Write the `.rpi-imager-manifest` of a built image, so Raspberry Pi Imager 2.x offers its OS customisation.

The manifest is Imager's OS-list JSON (rpi-imager doc/json-schema/os-list-schema.json). `init_format:
cloudinit-rpi` makes Imager write cloud-init's NoCloud files on the card's boot partition: hostname, user
with SSH key, Wi-Fi and its country, time zone. Open it in Imager (double-click, or
`rpi-imager --repo FILE`); its URLs are absolute, so keep the image where the manifest says.

Usage: rpi_imager_manifest.py IMAGE(.img or .img.xz) [--url URL] [--icon-url URL] [--release-date YYYY-MM-DD]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import lzma
import sys
from pathlib import Path

NAME = "DataYoti Edge"
DESCRIPTION = "ESP32 sensors to TimescaleDB and Grafana: Raspberry Pi OS Lite (trixie, 64-bit) appliance"
WEBSITE = "https://github.com/datayoti/datayoti-edge"
# Imager's device tags of the 64-bit Pis this arm64 image boots.
DEVICES = ("pi5-64bit", "pi4-64bit", "pi3-64bit")
# Imager builds its "choose your device" step only from a manifest's imager.devices (rpi-imager
# src/hwlistmodel.cpp); entries as in its doc/local_json/create_local_json.py.
IMAGER_DEVICES = (
    ("Raspberry Pi 5", "pi5-64bit", "RPi_5.png", "Raspberry Pi 5, 500 and Compute Module 5"),
    ("Raspberry Pi 4", "pi4-64bit", "RPi_4.png", "Raspberry Pi 4 Model B, 400 and Compute Module 4"),
    ("Raspberry Pi 3", "pi3-64bit", "RPi_3.png", "Raspberry Pi 3 Model B/B+, Zero 2 W and Compute Module 3"),
)
ICON_BASE = "https://downloads.raspberrypi.com/imager/icons/"
ICON = Path(__file__).with_name("datayoti-icon.svg")
CHUNK = 1 << 20


def digests(path: Path) -> tuple[int, str, int, str]:
    """(extract size, extract sha256, download size, download sha256) of an .img or .img.xz."""
    download = hashlib.sha256()
    extract = hashlib.sha256()
    extract_size = 0
    decompressor = lzma.LZMADecompressor() if path.name.endswith(".xz") else None
    with open(path, "rb") as image:
        while chunk := image.read(CHUNK):
            download.update(chunk)
            data = decompressor.decompress(chunk) if decompressor else chunk
            extract.update(data)
            extract_size += len(data)
    if decompressor and not decompressor.eof:
        raise ValueError(f"{path}: truncated xz stream")
    return extract_size, extract.hexdigest(), path.stat().st_size, download.hexdigest()


def manifest(url: str, icon: str, sizes: tuple[int, str, int, str], release_date: str) -> dict:
    extract_size, extract_sha256, download_size, download_sha256 = sizes
    devices = [{"name": name, "tags": [tag], "icon": ICON_BASE + icon_file, "description": description,
                "matching_type": "exclusive", "capabilities": []}
               for name, tag, icon_file, description in IMAGER_DEVICES]
    return {"imager": {"devices": devices}, "os_list": [{
        "name": NAME, "description": DESCRIPTION, "icon": icon, "website": WEBSITE, "url": url,
        "extract_size": extract_size, "extract_sha256": extract_sha256,
        "image_download_size": download_size, "image_download_sha256": download_sha256,
        "release_date": release_date, "init_format": "cloudinit-rpi", "architecture": "armv8",
        "devices": list(DEVICES),
    }]}


def manifest_path(image: Path) -> Path:
    stem = image.name.removesuffix(".xz").removesuffix(".img")
    return image.with_name(stem + ".rpi-imager-manifest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path, help="the built image, .img or .img.xz")
    parser.add_argument("--url", help="where Imager downloads it (default: file:// of IMAGE)")
    parser.add_argument("--icon-url", help=f"the icon Imager shows (default: file:// of {ICON.name})")
    parser.add_argument("--release-date", default=datetime.date.today().isoformat(), help="YYYY-MM-DD")
    args = parser.parse_args(argv)
    try:
        datetime.date.fromisoformat(args.release_date)
        image = args.image.resolve(strict=True)
        sizes = digests(image)
    except (OSError, ValueError, lzma.LZMAError) as exc:
        print(f"rpi_imager_manifest: {exc}", file=sys.stderr)
        return 1
    icon = args.icon_url or ICON.resolve().as_uri()
    target = manifest_path(image)
    target.write_text(json.dumps(manifest(args.url or image.as_uri(), icon, sizes, args.release_date), indent=2)
                      + "\n")
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
