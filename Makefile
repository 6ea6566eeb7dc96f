# DataYoti Edge: developer entry points. Run as root on a Debian build machine.
SHELL := /bin/bash
VENV := .venv
STAMP := $(VENV)/.setup-done
TESTBED := tests/testbed/testbed

.PHONY: setup demo demo-down test test-unit lint bench bench-smoke dashboards clean

## setup: host packages (apt), the pinned Python tools (pip) and the Ansible collections
setup: $(STAMP)
$(STAMP): requirements-dev.txt ansible/requirements.yml
	apt-get update -qq || echo "setup: apt-get update reported errors; trying the install anyway" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		mmdebstrap systemd-container iproute2 openssh-client python3-venv shellcheck \
		qemu-system-x86 qemu-utils mtools dosfstools fdisk rsync xz-utils >/dev/null
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(VENV)/bin/ansible-galaxy collection install -r ansible/requirements.yml
	touch $@

## demo: one simulated Pi provisioned by site.yml, with simulated sensors publishing into it
demo: setup
	tests/sim/demo.sh

## demo-down: remove the demo's simulated Pi
demo-down:
	$(TESTBED) --bed demo down

## test: every check CI runs (lint, unit, integration on simulated Pis, molecule)
test: setup
	$(VENV)/bin/pytest

## bench: the full benchmark on a simulated Pi (ingest, memory, SD writes, dashboards); report in bench-report/
bench: setup
	$(VENV)/bin/python tests/bench/bench.py

bench-smoke: setup
	$(VENV)/bin/python tests/bench/bench.py --smoke

test-unit: setup
	$(VENV)/bin/pytest tests/unit tests/test_lint.py

lint: setup
	$(VENV)/bin/pytest tests/test_lint.py

## dashboards: regenerate roles/grafana's dashboards and alert rules (commit the result; a unit test checks it)
dashboards: setup
	$(VENV)/bin/python roles/grafana/src/datayoti_dashboards.py

clean:
	for bed in /run/datayoti-testbed/*/; do [ -d "$$bed" ] && $(TESTBED) --bed "$$(basename "$$bed")" down; done; true

## image-test: build the SD image through the pi-gen shim (tests/image) and boot-test it under qemu (amd64)
.PHONY: image-test image-arm64
image-test: setup
	$(VENV)/bin/pytest tests/integration/test_image.py

## image-arm64: build the arm64 (Raspberry Pi) image and boot one card of it under qemu-system-aarch64
image-arm64: setup
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		qemu-system-arm qemu-user-static binfmt-support arch-test fdisk >/dev/null
	$(VENV)/bin/python tests/image/qemu_card.py --arch arm64
