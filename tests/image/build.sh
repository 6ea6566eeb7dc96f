#!/bin/bash
# The test image: DataYoti Edge's pi-gen stage applied, through pi-gen's own stage logic, to a Debian trixie
# root filesystem that stands in for Raspberry Pi OS Lite (the end of pi-gen's stage2), then assembled into a
# disk with Raspberry Pi OS's layout. The Raspberry Pi archive cannot be reached here; Debian's mirror can.
#
#   tests/image/build.sh [--arch amd64|arm64] [--stage DIR]
#
# Prints the directory that holds the result: image.img (MBR; p1 FAT32 512 MiB "bootfs" for /boot/firmware,
# p2 ext4 "rootfs"), vmlinuz and initrd.img for qemu's direct kernel boot (a real Pi boots its firmware from
# the FAT partition instead), and build.json (sizes, offsets, timings).
#
# Steps, each cached:
#   base    mmdebstrap trixie with systemd, openssh-server, cloud-init (NoCloud seed on the FAT partition
#           labelled bootfs), the kernel, python3, python3-apt, sudo: the packages of pi-gen's stage0-2 that
#           matter here. Cached by its recipe.
#   stages  tests/image/stage2 (pi-gen's stage1/stage2 steps that depend on image/config: the first user,
#           SSH, root's password, the seed templates), then image/stage-datayoti (the lead's stage), both run by
#           pi-gen's run_stage logic (tests/image/pigen-shim.sh) with image/config sourced and
#           DATAYOTI_GRAFANA_PACKAGE=0 (no Grafana package can be downloaded here).
#   export  pi-gen's export-image steps that matter (apt archives left out, machine-id "uninitialized",
#           logs emptied), then the disk, made without loop devices: mkfs.ext4 -d, mkfs.vfat + mcopy, sfdisk,
#           dd conv=notrunc. The image is cached by a hash of everything that goes into it.
#
# Environment: DATAYOTI_VENV (the virtualenv with ansible-playbook, default .venv), DATAYOTI_IMAGE_CACHE (default ~/.cache/datayoti-image), DATAYOTI_IMAGE_WORK (default
# /var/tmp/datayoti-image), DATAYOTI_IMAGE_STAGE (default image/stage-datayoti), DATAYOTI_IMAGE_REBUILD=1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ARCH="$(dpkg --print-architecture)"
STAGE_PATH="${DATAYOTI_IMAGE_STAGE:-$REPO/image/stage-datayoti}"
SUITE=trixie
MIRROR=http://deb.debian.org/debian
BASE_VERSION=1 # bump to rebuild every cached base
CACHE="${DATAYOTI_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/datayoti-image}"
WORK_ROOT="${DATAYOTI_IMAGE_WORK:-/var/tmp/datayoti-image}"
KEEP_IMAGES=2 # per architecture

while [ $# -gt 0 ]; do
	case "$1" in
	--arch) ARCH="$2"; shift 2 ;;
	--stage) STAGE_PATH="$(realpath "$2")"; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
case "$ARCH" in
amd64) KERNEL_PACKAGE=linux-image-amd64 ;;
arm64) KERNEL_PACKAGE=linux-image-arm64 ;;
*) echo "build.sh: --arch amd64 or arm64, not $ARCH" >&2; exit 2 ;;
esac

# What Raspberry Pi OS Lite brings that the stage and the first boot rely on (pi-gen stage0-2), with Debian's
# kernel and systemd-networkd in place of the Pi's kernel and NetworkManager.
BASE_PACKAGES=(
	systemd systemd-sysv systemd-timesyncd dbus udev kmod
	openssh-server cloud-init "$KERNEL_PACKAGE" initramfs-tools
	python3 python3-apt sudo iproute2 ca-certificates tzdata procps less
	e2fsprogs dosfstools adduser passwd netbase
)
# Raspberry Pi OS's rpi-cloud-init-mods points cloud-init at the FAT partition; this is its stand-in.
NOCLOUD_CFG='# Raspberry Pi OS: the NoCloud seed (user-data, meta-data, network-config) is on the FAT partition
# labelled bootfs, mounted at /boot/firmware, where Raspberry Pi Imager and users write it.
datasource_list: [ NoCloud, None ]
datasource:
  NoCloud:
    fs_label: bootfs
'
# cloud-init mounts the seed's partition itself unless it is mounted already: if fstab's mount of /boot/firmware
# lands in between, its own mount fails and the seed is ignored (seen on a slow arm64 boot). Look once it is mounted.
SEED_MOUNT_DROPIN='[Unit]
# The NoCloud seed is on /boot/firmware: search for it once fstab has mounted it, not racing that mount.
RequiresMountsFor=/boot/firmware
'
# shellcheck disable=SC2016 # mmdebstrap's hooks expand $1 (the root filesystem) themselves
BASE_HOOKS=(
	'mkdir -p "$1/boot/firmware"'
	"printf '%s' '$NOCLOUD_CFG' > \"\$1/etc/cloud/cloud.cfg.d/99_raspberry-pi-nocloud.cfg\""
	'mkdir -p "$1/etc/systemd/system/cloud-init-local.service.d"'
	"printf '%s' '$SEED_MOUNT_DROPIN' > \"\$1/etc/systemd/system/cloud-init-local.service.d/10-seed-mounted.conf\""
	'chroot "$1" systemctl enable systemd-networkd.service'
	'rm -f "$1"/etc/ssh/ssh_host_*'
)

log() { printf '[%(%T)T] build.sh: %s\n' -1 "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

base_key() {
	printf '%s\n' "$BASE_VERSION" "$SUITE" "$MIRROR" "$ARCH" "${BASE_PACKAGES[@]}" "${BASE_HOOKS[@]}" |
		sha256sum | cut -c1-16
}

# Everything that goes into the image: the base, this directory, image/config, the stage, the repo files the
# stage applies, and the build's SSH key. Paths and modes count (an NN-run.sh must be executable).
IMAGE_INPUTS=(tests/image image roles ansible ingestor/src systemd templates)
# Files there that boot or describe an image but do not go into it.
NOT_IMAGE_INPUTS=(tests/image/qemu_card.py tests/image/README.md)
image_key() {
	{
		base_key
		cat "$BUILD_KEY.pub"
		for top in "$REPO" "$STAGE_PATH"; do
			(
				cd "$top"
				if [ "$top" = "$REPO" ]; then set -- "${IMAGE_INPUTS[@]}"; else set -- .; fi
				find "$@" -type f ! -path '*/__pycache__/*' ! -path '*/.pytest_cache/*' ! -name '*.pyc' \
					-printf '%m %p\n' 2>/dev/null | LC_ALL=C sort | while read -r mode path; do
					[[ " ${NOT_IMAGE_INPUTS[*]} " == *" $path "* && "$top" = "$REPO" ]] && continue
					printf '%s %s %s\n' "$mode" "$(sha256sum <"$path" | cut -c1-64)" "$path"
				done
			)
		done
	} | sha256sum | cut -c1-16
}

enable_binfmt() {
	[ "$ARCH" = "$(dpkg --print-architecture)" ] && return 0
	command -v arch-test >/dev/null || { echo "build.sh: $ARCH needs arch-test (make image-arm64 installs it)" >&2; exit 1; }
	[ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
	[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || {
		echo "build.sh: arm64 needs qemu-user-static and binfmt-support (binfmt qemu-aarch64 not enabled)" >&2
		exit 1
	}
}

build_base() {
	local base="$1" tmp="$1.tmp" started hooks=()
	[ -f "$base/etc/os-release" ] && return 0
	rm -rf --one-file-system "$tmp"
	log "base: mmdebstrap $SUITE $ARCH into $base (cached afterwards)"
	started="$(now)"
	for hook in "${BASE_HOOKS[@]}"; do hooks+=("--customize-hook=$hook"); done
	mmdebstrap --variant=apt --architectures="$ARCH" --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
		--skip=cleanup/apt/lists "${hooks[@]}" "$SUITE" "$tmp" "$MIRROR" >"$CACHE/$ARCH/base.log" 2>&1 || {
		tail -n 30 "$CACHE/$ARCH/base.log" >&2
		return 1
	}
	mv "$tmp" "$base"
	log "base: built in $(since "$started") s"
}

# The config pi-gen would see: its defaults, then image/config, then what the test image must change.
load_config() {
	export FIRST_USER_NAME=pi FIRST_USER_PASS="" ENABLE_SSH=0 PUBKEY_ONLY_SSH=0 PUBKEY_SSH_FIRST_USER=""
	export ENABLE_CLOUD_INIT=1 RELEASE=trixie TARGET_HOSTNAME=raspberrypi DISABLE_FIRST_BOOT_USER_RENAME=0
	export LOCALE_DEFAULT=en_GB.UTF-8 TIMEZONE_DEFAULT=Europe/London PASSWORDLESS_SUDO=0 IMG_NAME=""
	if [ -f "$REPO/image/config" ]; then
		set -a
		# shellcheck source=/dev/null
		. "$REPO/image/config"
		set +a
	fi
	# pi-gen's build.sh: these are exported after the config is read, with these defaults.
	export FIRST_USER_NAME="${FIRST_USER_NAME:-pi}" ENABLE_SSH="${ENABLE_SSH:-0}"
	export PUBKEY_ONLY_SSH="${PUBKEY_ONLY_SSH:-0}" ENABLE_CLOUD_INIT="${ENABLE_CLOUD_INIT:-1}"
	export ARCH IMG_NAME="${IMG_NAME:-raspios-$RELEASE-$ARCH}" DATAYOTI_GRAFANA_PACKAGE=0
	# image/build.sh's --ssh-key; pi-gen refuses PUBKEY_ONLY_SSH=1 without it.
	PUBKEY_SSH_FIRST_USER="$(cat "$BUILD_KEY.pub")"
	export PUBKEY_SSH_FIRST_USER
	# The stage runs ansible-playbook: the project's virtualenv (make setup) comes first.
	export PATH="${DATAYOTI_VENV:-$REPO/.venv}/bin:$PATH"
}

# pi-gen's export-image steps that shape what a card starts from (05-finalise), on the last stage's rootfs.
export_rootfs() {
	local rootfs="$1"
	on_chroot <<-EOF
		apt-get clean
	EOF
	unmount "$rootfs"
	rm -f "$rootfs"/etc/{passwd,group,shadow,gshadow,subuid,subgid}- "$rootfs"/var/cache/debconf/*-old \
		"$rootfs"/var/lib/dpkg/*-old "$rootfs/var/lib/dbus/machine-id"
	echo "uninitialized" >"$rootfs/etc/machine-id"
	ln -nsf /proc/mounts "$rootfs/etc/mtab"
	find "$rootfs/var/log/" -type f -exec cp /dev/null {} \;
}

# Raspberry Pi OS's layout, sized like pi-gen's export-image/prerun.sh; no loop device, no mount.
assemble_disk() {
	local rootfs="$1" out="$2" align boot_size root_size root_margin boot_start root_start root_part img_size
	align=$((8 * 1024 * 1024))
	boot_size=$((512 * 1024 * 1024))
	root_size="$(du -x --apparent-size -s "$rootfs" --exclude var/cache/apt/archives --exclude boot/firmware \
		--block-size=1 | cut -f 1)"
	root_margin=$((root_size / 5 + 200 * 1024 * 1024))
	boot_start=$align
	root_start=$((boot_start + (boot_size + align - 1) / align * align))
	root_part=$(((root_size + root_margin + align - 1) / align * align))
	img_size=$((root_start + root_part))

	rm -f "$out/boot.fat" "$out/root.ext4" "$out/image.img"
	mkfs.vfat -n bootfs -F 32 -s 1 -C "$out/boot.fat" $((boot_size / 1024)) >/dev/null
	if [ -n "$(ls -A "$rootfs/boot/firmware")" ]; then
		mcopy -s -p -m -i "$out/boot.fat" "$rootfs"/boot/firmware/* ::/
	fi
	# mkfs.ext4 -d takes a directory whole: move the FAT partition's files out of the way meanwhile.
	mv "$rootfs/boot/firmware" "$out/firmware.moved"
	mkdir -m 0755 "$rootfs/boot/firmware"
	mkfs.ext4 -q -L rootfs -O "^huge_file" -d "$rootfs" "$out/root.ext4" $((root_part / 1024))K
	rmdir "$rootfs/boot/firmware"
	mv "$out/firmware.moved" "$rootfs/boot/firmware"

	truncate -s "$img_size" "$out/image.img"
	sfdisk --quiet "$out/image.img" <<-EOF
		label: dos
		start=$((boot_start / 512)), size=$((boot_size / 512)), type=c
		start=$((root_start / 512)), size=$((root_part / 512)), type=83
	EOF
	dd if="$out/boot.fat" of="$out/image.img" bs=4M seek=$((boot_start)) oflag=seek_bytes conv=notrunc,sparse \
		status=none
	dd if="$out/root.ext4" of="$out/image.img" bs=4M seek=$((root_start)) oflag=seek_bytes conv=notrunc,sparse \
		status=none
	rm -f "$out/boot.fat" "$out/root.ext4"
	BOOT_OFFSET=$boot_start ROOT_OFFSET=$root_start IMG_SIZE=$img_size ROOT_CONTENT=$root_size
}

cleanup_work() {
	if unmount "$WORK_DIR" && [ "${DATAYOTI_IMAGE_KEEP_WORK:-0}" != 1 ]; then
		rm -rf --one-file-system "$WORK_DIR"
	fi
}

latest() { find "$1" -maxdepth 1 -name "$2" -type f | sort -V | tail -n 1; }

main() {
	[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (chroot, mounts)" >&2; exit 1; }
	for tool in mmdebstrap rsync mkfs.ext4 mkfs.vfat mcopy sfdisk; do
		command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (make image-test installs it)" >&2; exit 1; }
	done
	[ -d "$STAGE_PATH" ] || { echo "build.sh: no stage at $STAGE_PATH" >&2; exit 1; }
	mkdir -p "$CACHE/$ARCH" "$WORK_ROOT"
	exec 9>"$CACHE/$ARCH/.build.lock"
	flock 9

	# PUBKEY_ONLY_SSH needs the builder's key (pi-gen refuses to build without one): a key of the test image's
	# own, whose private half stays in the cache, so a test can log in as the first user too.
	BUILD_KEY="$CACHE/$ARCH/build-key"
	[ -f "$BUILD_KEY" ] || ssh-keygen -q -t ed25519 -N "" -C "datayoti-test-image-builder" -f "$BUILD_KEY"
	local key out started t0 timings=""
	key="$(image_key)"
	out="$CACHE/$ARCH/img-$key"
	if [ -f "$out/build.json" ] && [ "${DATAYOTI_IMAGE_REBUILD:-0}" != 1 ]; then
		log "image $key is cached"
		echo "$out"
		return 0
	fi
	started="$(now)"
	enable_binfmt

	local base
	base="$CACHE/$ARCH/base-$(base_key)"
	t0="$(now)"
	build_base "$base"
	timings="\"base_s\": $(since "$t0")"

	# pi-gen's environment, then its run_stage over stage2 (the config-dependent part) and the stage.
	# shellcheck source=tests/image/pigen-shim.sh
	. "$HERE/pigen-shim.sh"
	load_config
	export WORK_DIR="$WORK_ROOT/$ARCH"
	export LOG_FILE="$WORK_DIR/build.log" BASE_DIR="$REPO" CLEAN=1
	unmount "$WORK_DIR"
	rm -rf --one-file-system "$WORK_DIR"
	mkdir -p "$WORK_DIR"
	# Never leave a mount behind, even on failure; never delete a tree that still has one.
	trap 'cleanup_work' EXIT
	trap 'exit 130' INT TERM
	export PREV_ROOTFS_DIR="$base"
	t0="$(now)"
	STAGE_DIR="$HERE/stage2" run_stage
	timings="$timings, \"stage2_s\": $(since "$t0")"
	t0="$(now)"
	STAGE_DIR="$STAGE_PATH" run_stage
	timings="$timings, \"stage_s\": $(since "$t0")"

	t0="$(now)"
	export_rootfs "$ROOTFS_DIR"
	rm -rf --one-file-system "$out.tmp"
	mkdir -p "$out.tmp"
	cp "$(latest "$ROOTFS_DIR/boot" 'vmlinuz-*')" "$out.tmp/vmlinuz"
	cp "$(latest "$ROOTFS_DIR/boot" 'initrd.img-*')" "$out.tmp/initrd.img"
	assemble_disk "$ROOTFS_DIR" "$out.tmp"
	timings="$timings, \"export_s\": $(since "$t0")"
	cat >"$out.tmp/build.json" <<-EOF
		{"key": "$key", "arch": "$ARCH", "stage": "$STAGE_PATH", "img_name": "$IMG_NAME",
		 "boot_offset": $BOOT_OFFSET, "boot_size": $((512 * 1024 * 1024)), "root_offset": $ROOT_OFFSET,
		 "image_size": $IMG_SIZE, "root_content": $ROOT_CONTENT,
		 "image_allocated": $(du -B1 "$out.tmp/image.img" | cut -f1),
		 "timings": {$timings, "total_s": $(since "$started")}}
	EOF
	rm -rf --one-file-system "$out"
	mv "$out.tmp" "$out"
	# Keep the newest images of this architecture only.
	find "$CACHE/$ARCH" -maxdepth 1 -name 'img-*' -type d ! -name '*.tmp' -printf '%T@ %p\n' | sort -rn |
		tail -n +$((KEEP_IMAGES + 1)) | cut -d' ' -f2- | xargs -r rm -rf --one-file-system
	log "image $key built in $(since "$started") s: $out"
	echo "$out"
}

main
