#!/bin/sh
# The floor of a boot that leaves deletion for later: the changes an after-boot run makes (the old
# root renamed into the trash, a new one created, the transaction committed), in a shell, with no
# checks, no listing, no interpreter. Benchmark only, never shipped: how much of the project's growth
# with nested subvolumes is the filesystem's own (mount, rename, create, commit, umount).
# usage: floor_after_boot.sh DEVICE
set -eu
device=$1
top=/run/rollback-floor
mkdir -p "$top"
mount -o subvolid=5 "$device" "$top"
mkdir -p "$top/.rollback/trash"
mv "$top/root" "$top/.rollback/trash/$(date -u +%Y%m%dT%H%M%SZ)"
btrfs subvolume create "$top/root" > /dev/null
btrfs filesystem sync "$top"
umount "$top"
