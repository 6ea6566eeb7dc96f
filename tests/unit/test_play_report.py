"""A failed playbook run explains itself: the units its failed tasks name are found (tests/conftest.py)."""

from __future__ import annotations

import subprocess

from conftest import REPORT_LINES, REPORT_UNITS, UNIT_REPORT_SCRIPT, play_summary, units_named_in_failures

# The failure of issue 8 (a handler), a failed loop item, and lines that must not count.
OUTPUT = """\
RUNNING HANDLER [ingestor : Restart datayoti-migrate] **************************
fatal: [pi1]: FAILED! => {"changed": false, "msg": "Unable to restart service datayoti-migrate.service: Job for \
datayoti-migrate.service failed because of unavailable resources or another system error.\\nSee \\"systemctl status \
datayoti-migrate.service\\" and \\"journalctl -xeu datayoti-migrate.service\\" for details.\\n"}
changed: [pi2]
failed: [pi2] (item=datayoti-ingestor.service) => {"ansible_loop_var": "item", "changed": false, "item": \
"datayoti-ingestor.service", "msg": "Unable to start service datayoti-ingestor.service: Job for \
datayoti-ingestor.service failed because the control process exited with error code."}
ok: [pi3] => (item=mosquitto.service)
fatal: [pi3]: UNREACHABLE! => {"changed": false, "msg": "Failed to connect to the host via ssh"}
"""


def test_units_named_in_failed_tasks_are_found_once_per_host():
    assert units_named_in_failures(OUTPUT) == {
        "pi1": ["datayoti-migrate.service"],
        "pi2": ["datayoti-ingestor.service"],
        "pi3": [],
    }


def test_a_successful_run_names_no_unit():
    assert units_named_in_failures("ok: [pi1] => (item=mosquitto.service)\nchanged: [pi2]\n") == {}


def test_the_report_script_is_bounded_and_valid_shell():
    script = UNIT_REPORT_SCRIPT.format(named="datayoti-migrate.service", units=REPORT_UNITS, lines=REPORT_LINES)
    assert f"-n {REPORT_LINES} " in script and f"-le {REPORT_UNITS} " in script
    assert "timeout " in script
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0


def test_play_summary_carries_the_unit_report():
    result = subprocess.CompletedProcess(["ansible-playbook"], 2, stdout=OUTPUT, stderr="")
    result.unit_report = "\nUNITS:\n== pi1\n--- datayoti-migrate.service: Result=resources\n"
    summary = play_summary(result)
    assert "Result=resources" in summary and "Restart datayoti-migrate" in summary
