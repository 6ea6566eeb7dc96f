#!/bin/bash
# Inside the image's root filesystem: key-only SSH that works, and nothing that two cards would share.
set -euo pipefail

# pi-gen's PUBKEY_ONLY_SSH pitfall: without FIRST_USER_PASS, stage1's `adduser --disabled-login`
# leaves the first user with a nologin shell, so its SSH key logs in to nothing.
if id -u "${FIRST_USER_NAME}" >/dev/null 2>&1; then
	usermod --shell /bin/bash "${FIRST_USER_NAME}"
	# '*': no password can match; unlike a '!' lock, it never blocks a key login.
	usermod --password '*' "${FIRST_USER_NAME}"
fi
usermod --password '*' root

# Every card makes its own: SSH host keys (cloud-init, at first boot) and machine-id (systemd).
rm -f /etc/ssh/ssh_host_*
echo uninitialized >/etc/machine-id
rm -f /var/lib/dbus/machine-id

# No secret may be baked in: datayoti firstboot makes them on each card.
for baked in /etc/datayoti/secrets/* /var/lib/mosquitto/dynamic-security.json /etc/mosquitto/certs/*.key; do
	if [ -e "${baked}" ]; then
		echo "stage-datayoti: ${baked} is in the image; secrets are made on each card" >&2
		exit 1
	fi
done
# Nor any password: '*' or a '!' lock for every account, never an empty or a hashed one.
awk -F: '$2 !~ /^[*!]/ { found = 1; print "stage-datayoti: user " $1 " has a password" > "/dev/stderr" }
	END { exit found }' /etc/shadow
