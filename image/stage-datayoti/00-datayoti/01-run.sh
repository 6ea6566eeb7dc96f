#!/bin/bash
# Applies the same roles as `ansible-playbook site.yml` into the image's root filesystem, through
# Ansible's chroot connection: services enabled, none started, no secret made (the card's first boot
# makes them with `datayoti firstboot`).
set -euo pipefail

REPO_DIR="$(cd "${STAGE_DIR}/../.." && pwd)"
PLAYBOOK="${ANSIBLE_PLAYBOOK:-ansible-playbook}"
INVENTORY="${STAGE_WORK_DIR}/datayoti-inventory.ini"

command -v "${PLAYBOOK}" >/dev/null || {
	echo "stage-datayoti: ${PLAYBOOK} not found: run 'make setup' in ${REPO_DIR} (image/README.md)" >&2
	exit 1
}

# The chroot's /proc, /dev, /sys, /run and /tmp, mounted by pi-gen's on_chroot until the stage ends.
on_chroot </dev/null

printf '[datayoti]\n%s ansible_connection=community.general.chroot\n' "${ROOTFS_DIR}" >"${INVENTORY}"

log "stage-datayoti: site.yml into ${ROOTFS_DIR} (Grafana package: ${DATAYOTI_GRAFANA_PACKAGE:-1})"
ANSIBLE_CONFIG="${REPO_DIR}/ansible/ansible.cfg" "${PLAYBOOK}" \
	--inventory "${INVENTORY}" \
	--extra-vars "@${STAGE_DIR}/image-vars.yml" \
	--extra-vars "{\"grafana_package_install\": $([ "${DATAYOTI_GRAFANA_PACKAGE:-1}" = 1 ] && echo true || echo false)}" \
	"${REPO_DIR}/ansible/site.yml"

# What cloud-init's user-data cannot say: the card's site and sensors (documented in the file).
install -m 0644 files/datayoti.toml "${ROOTFS_DIR}/boot/firmware/datayoti.toml"
