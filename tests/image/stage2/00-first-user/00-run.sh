#!/bin/bash -e
# pi-gen stage1/01-sys-tweaks/00-run.sh; fstab by label (pi-gen writes PARTUUIDs at export).

cat >"${ROOTFS_DIR}/etc/fstab" <<FSTAB
proc            /proc           proc    defaults          0       0
LABEL=bootfs    /boot/firmware  vfat    defaults          0       2
LABEL=rootfs    /               ext4    defaults,noatime  0       1
FSTAB

on_chroot <<CHROOT
if ! id -u ${FIRST_USER_NAME} >/dev/null 2>&1; then
	adduser --disabled-login --gecos "" ${FIRST_USER_NAME}
fi

if [ -n "${FIRST_USER_PASS}" ]; then
	echo "${FIRST_USER_NAME}:${FIRST_USER_PASS}" | chpasswd
	usermod -s /bin/bash "${FIRST_USER_NAME}"
fi
echo "root:root" | chpasswd
CHROOT
