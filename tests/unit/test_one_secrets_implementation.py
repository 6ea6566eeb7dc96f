"""Issue 9, acceptance 7: no role generates a secret; `datayoti secrets ensure` is the one implementation."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Ways a task, template or script could make a secret or a key by itself.
GENERATORS = re.compile(
    r"openssl\s+(rand|genpkey|genrsa|ecparam|req|x509)|token_(urlsafe|hex|bytes)"
    r"|\bsecrets\.(token|choice|randbits|SystemRandom)|/dev/u?random"
    r"|lookup\(\s*['\"]password|password_hash|mosquitto_passwd|pwgen|random_string|community\.crypto"
    r"|ssh-keygen|uuidgen|\bmkpasswd\b")


# SSH host keys are the OS's: the drop-in only has Debian's sshd-keygen.service remake broken ones at boot.
HOST_KEYS_DROPIN = REPO / "roles/base/templates/sshd-keygen.conf.j2"


def role_files() -> list[Path]:
    return sorted(p for p in (REPO / "roles").rglob("*") if p.is_file() and "molecule" not in p.parts
                  and p.suffix in ("", ".yml", ".yaml", ".j2", ".sh", ".py"))


def test_no_role_generates_a_secret():
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for path in role_files() for n, line in enumerate(path.read_text().splitlines(), 1)
             if GENERATORS.search(line) and not line.lstrip().startswith("#")
             and not (path == HOST_KEYS_DROPIN and "ssh-keygen" in line and "openssl" not in line)]
    assert role_files(), "no role files found: the search proves nothing"
    assert not found, "secrets must come from `datayoti secrets ensure`, not a role task:\n" + "\n".join(found)


def test_the_roles_that_need_secrets_call_the_program():
    callers = {path.parts[-3] for path in (REPO / "roles").glob("*/tasks/*.yml")
               if re.search(r"'secrets', 'ensure'", path.read_text())}
    assert callers == {"grafana", "mosquitto", "timescaledb"}


def test_the_search_would_catch_the_old_generators():
    old = ["openssl rand -base64 32 | tr -d '/+=\\n'", "os.write(fd, (secrets.token_urlsafe(32) + ...",
           "umask 077 && openssl genpkey -algorithm EC", "mosquitto_passwd -U \"$candidate\""]
    assert all(GENERATORS.search(line) for line in old)
