#!/bin/sh
# The seed, as published (impermanence's README / the pasted script): mount the top level, delete
# root recursively with btrfs-progs, create it again. Benchmark only, never shipped. Needs
# btrfs-progs >= 6.3 (`subvolume delete -R`): Debian 13, not Debian 12.
# usage: seed.sh DEVICE
mkdir -p /mnt
mount "$1" /mnt
if [ -e /mnt/root ]; then
    btrfs subvolume delete -R /mnt/root
fi
btrfs subvolume create /mnt/root
umount /mnt
