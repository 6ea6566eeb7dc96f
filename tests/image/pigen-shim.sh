#!/bin/bash
# pi-gen's stage environment for running a pi-gen stage outside pi-gen (sourced by tests/image/build.sh).
#
# Provides what pi-gen's build.sh and scripts/common give a stage, with pi-gen's names and semantics
# (RPi-Distro/pi-gen, arm64 branch): log, copy_previous, on_chroot, unmount, and run_stage/run_sub_stage,
# which run prerun.sh, then per sub-stage NN-debconf, NN-packages-nr, NN-packages, NN-run.sh (executable,
# cwd = the sub-stage) and NN-run-chroot.sh (piped into on_chroot), honouring SKIP. Differences from pi-gen,
# none of which a stage can see: on_chroot uses chroot(8) instead of capsh, patches (NN-patches) are
# refused rather than applied with quilt, and EXPORT_IMAGE is recorded but the export is the caller's.
#
# Callers set WORK_DIR, LOG_FILE, SCRIPT_DIR-free config (FIRST_USER_NAME etc.) and PREV_ROOTFS_DIR, then call
# run_stage with STAGE_DIR set. Mounts are undone by unmount; the caller traps EXIT to call it.

# on_chroot takes a script on stdin or arguments, as pi-gen's does.
# shellcheck disable=SC2119,SC2120

export LOG_FILE="${LOG_FILE:-/dev/null}"

log() {
	date +"[%T] $*" | tee -a "${LOG_FILE}"
}
export -f log

copy_previous() {
	if [ ! -d "${PREV_ROOTFS_DIR}" ]; then
		echo "Previous stage rootfs not found"
		false
	fi
	mkdir -p "${ROOTFS_DIR}"
	rsync -aHAXx --exclude var/cache/apt/archives "${PREV_ROOTFS_DIR}/" "${ROOTFS_DIR}/"
}
export -f copy_previous

# Unmounts everything at or below $1 (default: the current directory), deepest first; bounded retries.
unmount() {
	local dir="${1:-$PWD}" i
	dir="$(realpath -m "$dir")"
	for i in 1 2 3 4 5 6; do
		if awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/self/mounts |
			sort -r | xargs -r umount; then
			break
		elif [ "$i" -eq 6 ]; then
			log "Failed to unmount ${dir}. Do not try to delete this directory while it contains mountpoints!"
			return 1
		fi
		log "Retrying ($i/5)..."
		sleep 1
	done
}
export -f unmount

_is_mounted() {
	awk -v d="$(realpath -m "$1")" '$2 == d {found = 1} END {exit !found}' /proc/self/mounts
}
export -f _is_mounted

# pi-gen: mounts proc, dev, dev/pts, sys, run (tmpfs) and tmp (tmpfs) once, then runs bash -e in the chroot
# with the given arguments (a script on stdin when there are none).
on_chroot() {
	_is_mounted "${ROOTFS_DIR}/proc" || mount -t proc proc "${ROOTFS_DIR}/proc"
	_is_mounted "${ROOTFS_DIR}/dev" || mount --bind /dev "${ROOTFS_DIR}/dev"
	_is_mounted "${ROOTFS_DIR}/dev/pts" || mount --bind /dev/pts "${ROOTFS_DIR}/dev/pts"
	_is_mounted "${ROOTFS_DIR}/sys" || mount --bind /sys "${ROOTFS_DIR}/sys"
	_is_mounted "${ROOTFS_DIR}/run" || mount -t tmpfs tmpfs "${ROOTFS_DIR}/run"
	_is_mounted "${ROOTFS_DIR}/tmp" || mount -t tmpfs tmpfs "${ROOTFS_DIR}/tmp"
	chroot "${ROOTFS_DIR}/" /bin/bash -e "$@"
}
export -f on_chroot

# pi-gen's scripts/remove-comments.sed: drop comments and blank lines of a packages file.
_package_list() {
	sed -e 's/#.*$//' -e '/^[[:space:]]*$/d' "$1" | tr '\n' ' '
}

run_sub_stage() {
	local i packages
	log "Begin ${SUB_STAGE_DIR}"
	pushd "${SUB_STAGE_DIR}" >/dev/null || return 1
	for i in {00..99}; do
		if [ -f "${i}-debconf" ]; then
			log "Begin ${SUB_STAGE_DIR}/${i}-debconf"
			on_chroot <<-EOF
				debconf-set-selections <<SELEOF
				$(cat "${i}-debconf")
				SELEOF
			EOF
			log "End ${SUB_STAGE_DIR}/${i}-debconf"
		fi
		if [ -f "${i}-packages-nr" ]; then
			log "Begin ${SUB_STAGE_DIR}/${i}-packages-nr"
			packages="$(_package_list "${i}-packages-nr")"
			if [ -n "${packages// /}" ]; then
				on_chroot <<-EOF
					apt-get -o Acquire::Retries=3 install --no-install-recommends -y $packages
				EOF
			fi
			log "End ${SUB_STAGE_DIR}/${i}-packages-nr"
		fi
		if [ -f "${i}-packages" ]; then
			log "Begin ${SUB_STAGE_DIR}/${i}-packages"
			packages="$(_package_list "${i}-packages")"
			if [ -n "${packages// /}" ]; then
				on_chroot <<-EOF
					apt-get -o Acquire::Retries=3 install -y $packages
				EOF
			fi
			log "End ${SUB_STAGE_DIR}/${i}-packages"
		fi
		if [ -d "${i}-patches" ]; then
			log "${SUB_STAGE_DIR}/${i}-patches: quilt patches are not supported by this shim"
			return 1
		fi
		if [ -x "${i}-run.sh" ]; then
			log "Begin ${SUB_STAGE_DIR}/${i}-run.sh"
			"./${i}-run.sh"
			log "End ${SUB_STAGE_DIR}/${i}-run.sh"
		elif [ -f "${i}-run.sh" ]; then
			log "Skip ${SUB_STAGE_DIR}/${i}-run.sh (not executable)"
		fi
		if [ -f "${i}-run-chroot.sh" ]; then
			log "Begin ${SUB_STAGE_DIR}/${i}-run-chroot.sh"
			on_chroot <"${i}-run-chroot.sh"
			log "End ${SUB_STAGE_DIR}/${i}-run-chroot.sh"
		fi
	done
	popd >/dev/null || return 1
	log "End ${SUB_STAGE_DIR}"
}

run_stage() {
	log "Begin ${STAGE_DIR}"
	STAGE="$(basename "${STAGE_DIR}")"
	export STAGE
	pushd "${STAGE_DIR}" >/dev/null || return 1
	export STAGE_WORK_DIR="${WORK_DIR}/${STAGE}"
	export ROOTFS_DIR="${STAGE_WORK_DIR}/rootfs"
	unmount "${WORK_DIR}/${STAGE}"
	if [ ! -f SKIP_IMAGES ] && [ -f "${STAGE_DIR}/EXPORT_IMAGE" ]; then
		EXPORT_DIRS="${EXPORT_DIRS:-} ${STAGE_DIR}"
	fi
	if [ ! -f SKIP ]; then
		if [ "${CLEAN:-}" = "1" ] && [ -d "${ROOTFS_DIR}" ]; then
			rm -rf "${ROOTFS_DIR}"
		fi
		if [ -x prerun.sh ]; then
			log "Begin ${STAGE_DIR}/prerun.sh"
			./prerun.sh
			log "End ${STAGE_DIR}/prerun.sh"
		fi
		for SUB_STAGE_DIR in "${STAGE_DIR}"/*; do
			if [ -d "${SUB_STAGE_DIR}" ] && [ ! -f "${SUB_STAGE_DIR}/SKIP" ]; then
				run_sub_stage
			fi
		done
	fi
	unmount "${WORK_DIR}/${STAGE}"
	export PREV_STAGE="${STAGE}" PREV_STAGE_DIR="${STAGE_DIR}" PREV_ROOTFS_DIR="${ROOTFS_DIR}"
	popd >/dev/null || return 1
	log "End ${STAGE_DIR}"
}
