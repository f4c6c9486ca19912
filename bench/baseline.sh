#!/bin/sh
# The baseline: a seed-equivalent shell rollback with btrfs-progs, for the benchmark only (never
# shipped). btrfs-progs 6.2 has no `subvolume delete -R`, so nested subvolumes are deleted
# deepest-first from one `btrfs subvolume list`, then the root, in one `btrfs` call.
# usage: baseline.sh DEVICE recreate|snapshot|keep
set -eu
device=$1
mode=$2
top=/run/rollback-baseline
mkdir -p "$top"
mount -o subvolid=5 "$device" "$top"

delete_tree() { # $1: subvolume path below the top level; nested ones deepest first, it last
    {
        btrfs subvolume list "$top" |
            awk -v root="$1" '{ path = $NF; if (index(path, root "/") == 1) print gsub("/", "/", path), path }' |
            sort -rn | cut -d' ' -f2
        echo "$1"
    } | sed "s|^|$top/|" | xargs btrfs subvolume delete > /dev/null
}

if [ -e "$top/root" ]; then
    if [ "$mode" = keep ]; then
        mkdir -p "$top/old_roots"
        mv "$top/root" "$top/old_roots/$(date -u +%Y%m%dT%H%M%SZ)"
    else
        delete_tree root
    fi
fi
if [ "$mode" = snapshot ]; then
    btrfs subvolume snapshot "$top/root-blank" "$top/root" > /dev/null
else
    btrfs subvolume create "$top/root" > /dev/null
fi
if [ "$mode" = keep ]; then # prune roots older than 30 days, by the date in their name
    cutoff=$(date -u -d '30 days ago' +%Y%m%dT%H%M%SZ)
    for old in "$top"/old_roots/*; do
        name=${old##*/}
        [ "$name" \< "$cutoff" ] && delete_tree "old_roots/$name"
    done
fi
umount "$top"
