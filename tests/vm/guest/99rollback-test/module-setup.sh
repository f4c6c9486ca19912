#!/bin/bash
# Test-only dracut module: after sysroot.mount (or in emergency mode) collect facts onto the
# second virtio disk as a tar stream, then power off. The host asserts on them.

check() {
    return 255
}

depends() {
    echo systemd systemd-initrd
    return 0
}

install() {
    inst_multiple tar sync cat cut grep journalctl systemctl
    inst_script "$moddir/rollback-test-collect.sh" /usr/bin/rollback-test-collect
    inst_simple "$moddir/rollback-test-collect@.service" "$systemdsystemunitdir/rollback-test-collect@.service"
    # the boot instance only runs with the root mounted; the emergency one when the boot stopped
    mkdir -p "$initdir$systemdsystemunitdir/rollback-test-collect@boot.service.d"
    printf '[Unit]\nRequires=sysroot.mount\n' > "$initdir$systemdsystemunitdir/rollback-test-collect@boot.service.d/root.conf"
    $SYSTEMCTL -q --root "$initdir" add-wants initrd-root-fs.target rollback-test-collect@boot.service
    $SYSTEMCTL -q --root "$initdir" add-wants emergency.target rollback-test-collect@emergency.service
}
