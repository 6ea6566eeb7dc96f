#!/usr/bin/env bash
# The main job on its embedded default: one simulated Pi provisioned by
# ansible/site.yml, and a fleet of simulated sensors publishing into it.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
testbed=("$repo/tests/testbed/testbed" --bed demo)
venv_bin=${DATAYOTI_VENV:-$repo/.venv}/bin
sensors=${DEMO_SENSORS:-5}
duration=${DEMO_DURATION:-20}

"${testbed[@]}" up 1 --sensors 0 >/dev/null
inventory=$("${testbed[@]}" inventory)
address=$("${testbed[@]}" status | "$venv_bin/python" -c 'import json,sys; print(json.load(sys.stdin)["hosts"]["pi1"]["address"])')
on_pi=("${testbed[@]}" exec pi1)

echo "== provisioning pi1 ($address) with ansible/site.yml"
(cd "$repo/ansible" && PATH="$venv_bin:$PATH" ansible-playbook -i "$inventory" site.yml)

echo "== datayoti device add: $sensors sensors, each with its own broker account"
for i in $(seq 1 "$sensors"); do
  mac=$(printf '02:DE:30:00:00:%02X' "$i")
  "${on_pi[@]}" datayoti device show "$mac" >/dev/null 2>&1 \
    || "${on_pi[@]}" datayoti device add "$mac" --site DEMO --name "demo sensor $i" --json >/dev/null
done
echo "-- what the first sensor's firmware needs (datayoti device show 02:DE:30:00:00:01 --config-h):"
"${on_pi[@]}" datayoti device show 02:DE:30:00:00:01 --config-h | head -5
"${on_pi[@]}" datayoti device list

echo "== datayoti simulate: $sensors sensors publish like the firmware for ${duration}s"
"${on_pi[@]}" datayoti simulate --devices "$sensors" --rate 0.5 --duration "$duration" --site DEMO

echo "== what the ingestor stored (psql on pi1)"
"${on_pi[@]}" sh -c 'cd / && sudo -u postgres psql -d datayoti_db \
  -c "SELECT * FROM latest_sensor_readings" \
  -c "SELECT device_id, count(*) AS readings FROM sensor_data GROUP BY 1 ORDER BY 1"'

echo "== datayoti status on pi1"
"${on_pi[@]}" datayoti status || true  # exit 1 says what is unhealthy; the demo goes on

cat <<MSG

The simulated Pi stays up:
  ${testbed[*]} ssh pi1          # log in (then: sudo datayoti status)
  make demo-down                 # remove it
MSG
