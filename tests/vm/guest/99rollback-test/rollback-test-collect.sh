#!/bin/sh
# $1: boot | emergency. Writes facts to /dev/vdb as a tar stream, then powers off at once.
facts=/run/rollback-test-facts
mkdir -p "$facts"
echo "$1" > "$facts/stage"
cat /proc/cmdline > "$facts/cmdline"
journalctl -b -o json --no-pager > "$facts/journal.json" 2> "$facts/journal.err"
units=$(systemctl list-units --all --plain --no-legend --no-pager 'rollback@*' 'rollback-early@*' 'rollback-baseline*' 'rollback-seed*' 'systemd-cryptsetup@*' 'dev-vd*.device' 'dev-mapper-*.device' | cut -d' ' -f1)
for unit in $units sysroot.mount; do
    systemctl show --no-pager "$unit" > "$facts/unit-$unit.txt"
done
# what rollback read of the root's mount, and its device unit's timeout drop-in (generators' output)
cat /run/systemd/generator/sysroot.mount > "$facts/sysroot.mount" 2> /dev/null
cat /run/systemd/generator/*.device.d/rollback.conf > "$facts/device-timeout.conf" 2> /dev/null
if grep -q ' /sysroot ' /proc/self/mountinfo; then
    echo mounted > "$facts/sysroot"
fi
if [ "$1" = boot ] && [ -x /usr/bin/rollback ]; then
    # the device as the tool sees it (the host cannot open LUKS images: no dm-crypt there)
    rollback status --json > "$facts/status.json" 2> "$facts/status.err"
fi
(cd "$facts" && tar -cf /dev/vdb .)
sync
echo "ROLLBACK-TEST-FACTS-WRITTEN $1" > /dev/console
systemctl --force --force poweroff
