#!/usr/bin/env bash
# Builds the DataYoti Edge SD image with pi-gen: Raspberry Pi OS Lite (stage0-2, trixie, arm64) and
# image/stage-datayoti. Needs internet (GitHub, the Raspberry Pi and Debian archives, Grafana's
# repository); requirements in image/README.md.
#
# Usage: sudo image/build.sh [--ssh-key FILE.pub] [--work DIR] [--no-grafana]
set -euo pipefail

PI_GEN_URL="https://github.com/RPi-Distro/pi-gen.git"
PI_GEN_BRANCH="arm64"
PI_GEN_COMMIT="ca8aeed0ae300c2a89f55ce9617d5f96a27e99e5" # arm64, 2026-06-16

IMAGE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "${IMAGE_DIR}")"

die() {
	echo "build.sh: $*" >&2
	exit 2
}

usage() {
	sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

ssh_key=""
work_dir="/var/tmp/datayoti-pi-gen" # GBs of root filesystems: outside the repository
grafana_package=1
while [ $# -gt 0 ]; do
	case "$1" in
	--ssh-key) ssh_key="${2:?--ssh-key needs a FILE.pub}"; shift 2 ;;
	--work) work_dir="${2:?--work needs a DIR}"; shift 2 ;;
	--no-grafana) grafana_package=0; shift ;;
	-h | --help) usage; exit 0 ;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
done

[ "${EUID}" -eq 0 ] || die "pi-gen needs root: sudo $0 $*"
if [ -z "${ssh_key}" ]; then
	# The key of the user who ran sudo, else root's.
	home="${HOME}"
	if [ -n "${SUDO_USER:-}" ]; then home="$(getent passwd "${SUDO_USER}" | cut -d: -f6)"; fi
	for candidate in "${home}"/.ssh/id_ed25519.pub "${home}"/.ssh/id_ecdsa.pub "${home}"/.ssh/id_rsa.pub; do
		if [ -f "${candidate}" ]; then ssh_key="${candidate}"; break; fi
	done
fi
[ -n "${ssh_key}" ] || die "no SSH public key found: pass --ssh-key FILE.pub (the image has no password)"
ssh-keygen -l -f "${ssh_key}" >/dev/null 2>&1 || die "${ssh_key} is not an SSH public key"
for tool in git xz; do
	command -v "${tool}" >/dev/null || die "${tool} is missing (image/README.md lists the requirements)"
done
# The stage runs Ansible from this repository's virtualenv (make setup), or from PATH.
if [ -x "${REPO_DIR}/.venv/bin/ansible-playbook" ]; then
	export PATH="${REPO_DIR}/.venv/bin:${PATH}"
fi
command -v ansible-playbook >/dev/null || die "ansible-playbook is missing: run 'make setup' in ${REPO_DIR}"

pi_gen="${work_dir}/pi-gen"
mkdir -p "${work_dir}"
if [ ! -d "${pi_gen}/.git" ]; then
	git clone --branch "${PI_GEN_BRANCH}" "${PI_GEN_URL}" "${pi_gen}"
fi
git -C "${pi_gen}" fetch --quiet origin "${PI_GEN_BRANCH}"
git -C "${pi_gen}" checkout --quiet --detach "${PI_GEN_COMMIT}"
[ "$(git -C "${pi_gen}" rev-parse HEAD)" = "${PI_GEN_COMMIT}" ] || die "pi-gen is not at ${PI_GEN_COMMIT}"
# Export only our stage, not stage2's plain Lite image.
touch "${pi_gen}/stage2/SKIP_IMAGES"
# pi-gen's export steps without 01-user-rename: its first-boot rename wizard would hold the console
# for a user name and password, and pi-gen refuses to switch it off without a default password.
export_dir="${work_dir}/export-image"
rm -rf "${export_dir}"
cp -a "${pi_gen}/export-image" "${export_dir}"
rm -rf "${export_dir}/01-user-rename"
export EXPORT_CONFIG_DIR="${export_dir}"

export PUBKEY_SSH_FIRST_USER DATAYOTI_GRAFANA_PACKAGE="${grafana_package}"
PUBKEY_SSH_FIRST_USER="$(cat "${ssh_key}")"
(cd "${pi_gen}" && ./build.sh -c "${IMAGE_DIR}/config")

shopt -s nullglob
images=("${pi_gen}"/deploy/image_*-datayoti-edge-datayoti.img.xz)
[ "${#images[@]}" -gt 0 ] || die "pi-gen finished without an image in ${pi_gen}/deploy"
for image in "${images[@]}"; do
	python3 "${IMAGE_DIR}/rpi_imager_manifest.py" "${image}"
done
echo "build.sh: done; flash ${images[-1]} with Raspberry Pi Imager (open the .rpi-imager-manifest beside it)"
