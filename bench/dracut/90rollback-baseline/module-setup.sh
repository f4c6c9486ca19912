#!/bin/bash
# Benchmark only: the seed-equivalent shell rollback (bench/baseline.sh) in the initramfs, with
# the same unit ordering as rollback@.service, so the two can be compared boot for boot.

check() {
    return 255
}

depends() {
    echo base systemd systemd-initrd btrfs
    return 0
}

install() {
    inst_multiple btrfs awk sort cut sed xargs mount umount mkdir date
    inst_script "$moddir/baseline.sh" /usr/bin/rollback-baseline
    inst_simple "$moddir/rollback-baseline.service" "$systemdsystemunitdir/rollback-baseline.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd.target rollback-baseline.service
}
