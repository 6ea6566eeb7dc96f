#!/usr/bin/env bash
# The main job on its embedded default: one simulated Pi provisioned by
# ansible/site.yml, and a fleet of simulated sensors publishing into it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
testbed=("$repo/tests/testbed/testbed" --bed demo)
venv_bin=${DATAYOTI_VENV:-$repo/.venv}/bin
sensors=${DEMO_SENSORS:-5}
duration=${DEMO_DURATION:-20}

"${testbed[@]}" up 1 --sensors "$sensors" >/dev/null
inventory=$("${testbed[@]}" inventory)
address=$("${testbed[@]}" status | "$venv_bin/python" -c 'import json,sys; print(json.load(sys.stdin)["hosts"]["pi1"]["address"])')

echo "== provisioning pi1 ($address) with ansible/site.yml"
(cd "$repo/ansible" && PATH="$venv_bin:$PATH" ansible-playbook -i "$inventory" site.yml)

echo "== fetching the sensors' credentials from pi1 (/etc/datayoti/sensors)"
creds=$(mktemp -d)
trap 'rm -rf "$creds"' EXIT
"${testbed[@]}" exec pi1 tar -C /etc/datayoti/sensors -cf - . | tar -C "$creds" -xf -

echo "== $sensors simulated sensors publish every 2 s for ${duration}s, at QoS 0 like the firmware"
"$venv_bin/python" "$repo/tests/sim/sensor_fleet.py" --credentials "$creds" --host "$address" \
  --interval 2 --duration "$duration"
sleep 2

echo "== what the ingestor stored (psql on pi1)"
"${testbed[@]}" exec pi1 sh -c 'cd / && sudo -u postgres psql -d datayoti_db \
  -c "SELECT * FROM latest_sensor_readings" -c "SELECT * FROM device_health" \
  -c "SELECT device_id, count(*) AS readings FROM sensor_data GROUP BY 1 ORDER BY 1"'
"${testbed[@]}" exec pi1 systemctl status datayoti-ingestor --no-pager --lines=0

echo "== datayoti status on pi1"
"${testbed[@]}" exec pi1 datayoti status || true  # exit 1 says what is unhealthy; the demo goes on

cat <<MSG

The simulated Pi stays up:
  ${testbed[*]} ssh pi1          # log in (then: sudo datayoti status)
  make demo-down                 # remove it
MSG
