#!/bin/bash
# Benchmark only: the seed's own script (seed.sh) in the initramfs, with the seed's unit shape
# (after the root device, before sysroot.mount), so the project can be compared with it boot for boot.

check() {
    return 255
}

depends() {
    echo base systemd systemd-initrd btrfs
    return 0
}

install() {
    inst_multiple btrfs mount umount mkdir
    inst_script "$moddir/seed.sh" /usr/bin/rollback-seed
    inst_simple "$moddir/rollback-seed.service" "$systemdsystemunitdir/rollback-seed.service"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd.target rollback-seed.service
}
