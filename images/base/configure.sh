#!/bin/sh
# Runs inside the debootstrapped root (chroot) to make it boot as a "VM" under
# Docker or LXD with systemd as PID 1.
set -eu

cat >/etc/apt/sources.list <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES

# Units that have nothing to do in a container and only fail or wait.
for unit in getty@tty1.service console-getty.service serial-getty@.service \
            sys-kernel-config.mount sys-kernel-debug.mount systemd-remount-fs.service \
            systemd-udevd.service systemd-udev-trigger.service systemd-firstboot.service; do
  ln -sf /dev/null "/etc/systemd/system/$unit"
done

# Each instance gets its own identity at first boot, not the image's.
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id /etc/ssh/ssh_host_*
cat >/etc/systemd/system/ssh-host-keys.service <<'UNIT'
[Unit]
Description=Generate this host's SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/ssh-host-keys.service /etc/systemd/system/multi-user.target.wants/ssh-host-keys.service

# The administrator account, as on Debian's cloud images: `admin`, uid 1000, no
# password, sudo without one. Its authorized key comes from outside the image
# (the LXD instance's file push, EC2's key pair), so the image admits nobody
# by itself; SSH as root stays off.
useradd --create-home --uid 1000 --user-group --groups sudo --shell /bin/bash admin
passwd --lock admin
install -d -m 0700 -o 1000 -g 1000 /home/admin/.ssh
echo 'admin ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/90-admin
chmod 0440 /etc/sudoers.d/90-admin

# LXD hands out addresses by DHCP; Docker configures eth0 itself, so the match
# on the virtualization type keeps networkd away from Docker's interface.
mkdir -p /etc/systemd/network
cat >/etc/systemd/network/80-lxd-eth0.network <<'NET'
[Match]
Name=eth0
Virtualization=lxc

[Network]
DHCP=ipv4
NET
ln -sf /lib/systemd/system/systemd-networkd.service /etc/systemd/system/multi-user.target.wants/systemd-networkd.service

# No hostname of the image's own: systemd keeps the one Docker or LXD gives the
# instance (its name), so every VM names itself in logs and headers.
rm -f /etc/hostname
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /tmp/* /var/tmp/*
