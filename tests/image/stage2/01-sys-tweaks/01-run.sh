#!/bin/bash -e
# pi-gen stage2/01-sys-tweaks/01-run.sh, the parts that concern users, SSH and host keys.

if [ -n "${PUBKEY_SSH_FIRST_USER}" ]; then
	install -v -m 0700 -o 1000 -g 1000 -d "${ROOTFS_DIR}"/home/"${FIRST_USER_NAME}"/.ssh
	echo "${PUBKEY_SSH_FIRST_USER}" >"${ROOTFS_DIR}"/home/"${FIRST_USER_NAME}"/.ssh/authorized_keys
	chown 1000:1000 "${ROOTFS_DIR}"/home/"${FIRST_USER_NAME}"/.ssh/authorized_keys
	chmod 0600 "${ROOTFS_DIR}"/home/"${FIRST_USER_NAME}"/.ssh/authorized_keys
fi

if [ "${PUBKEY_ONLY_SSH}" = "1" ]; then
	sed -i -Ee 's/^#?[[:blank:]]*PubkeyAuthentication[[:blank:]]*no[[:blank:]]*$/PubkeyAuthentication yes/
s/^#?[[:blank:]]*PasswordAuthentication[[:blank:]]*yes[[:blank:]]*$/PasswordAuthentication no/' "${ROOTFS_DIR}"/etc/ssh/sshd_config
fi

on_chroot <<CHROOT
if [ "${ENABLE_SSH}" == "1" ]; then
	systemctl enable ssh
else
	systemctl disable ssh
fi
CHROOT

# netdev and render come from Raspberry Pi OS packages that the test image lacks.
on_chroot <<-CHROOT
	for GRP in input spi i2c gpio netdev render; do
		groupadd -f -r "\$GRP"
	done
	for GRP in adm dialout cdrom audio users sudo video games plugdev input gpio spi i2c netdev render; do
		adduser $FIRST_USER_NAME \$GRP
	done
CHROOT

# raspi-config nonint do_sudo_pass 1, which pi-gen runs for PASSWORDLESS_SUDO=1.
if [ "${PASSWORDLESS_SUDO}" = "1" ]; then
	echo "${FIRST_USER_NAME} ALL=(ALL) NOPASSWD: ALL" >"${ROOTFS_DIR}/etc/sudoers.d/010_pi-nopasswd"
	chmod 0440 "${ROOTFS_DIR}/etc/sudoers.d/010_pi-nopasswd"
fi

on_chroot <<CHROOT
usermod --pass='*' root
CHROOT

rm -f "${ROOTFS_DIR}/etc/ssh/"ssh_host_*_key*
