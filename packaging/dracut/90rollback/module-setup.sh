#!/bin/bash
# dracut module: roll back the btrfs root subvolume in a systemd initramfs (see README, "dracut").
#
# Settings, from dracut.conf(.d) or the environment:
#   rollback_python   interpreter that can import rollback (default: python3 on PATH)
#   rollback_config   config file to install as /etc/rollback.toml (default: /etc/rollback.toml)
#   rollback_device   device to wait for and roll back (default: `device` in that config file)
#   rollback_policy   boot-on (default) | stop-boot: what a failed or refused rollback does

# called by dracut
check() {
    # only when asked for: dracut --add rollback
    return 255
}

# called by dracut
depends() {
    echo base bash systemd systemd-initrd btrfs
    return 0
}

_rollback_setting() { # key -> value from the config file, via the interpreter we install
    "$rollback_python" -I -S -c 'import sys, tomllib
try:
    print(tomllib.load(open(sys.argv[1], "rb")).get(sys.argv[2], ""))
except FileNotFoundError:
    pass' "$rollback_config" "$1"
}

_rollback_inst_extension() { # a C extension and the libraries it links
    # dracut-install resolves dependencies only for executable files; distributions ship
    # extension modules 0644 (Debian's _ctypes, whose libffi would be left behind). `inst`, not
    # `inst_library`: dracut-ng (Debian 13) has no inst_library, and a missing function here once
    # left every extension out of the initramfs without failing the build.
    local dep
    [[ -e $1 ]] && inst "$1" || return 1
    while read -r dep; do
        inst "$dep" || return 1
    done < <(ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')
}

_rollback_strip() { # our ELF files in the initramfs, without symbol tables (dracut strips debug info only)
    # pyenv's libpython and extensions keep theirs (0.3 MB zstd); a distribution's are stripped already
    local file
    command -v strip > /dev/null || return 0
    for file; do
        file=$(realpath -e "$file") || continue
        [[ -f $initdir$file ]] && { strip --strip-unneeded "$initdir$file" || return 1; }
    done
    return 0
}

# called by dracut
install() {
    local stage line kind path paths="" unit elves=()
    rollback_python=${rollback_python:-$(command -v python3)}
    rollback_config=${rollback_config:-/etc/rollback.toml}
    rollback_policy=${rollback_policy:-boot-on}
    rollback_device=${rollback_device:-$(_rollback_setting device)}
    if [[ -z $rollback_device ]]; then
        derror "rollback: no device: set device in $rollback_config or rollback_device in dracut.conf"
        return 1
    fi
    if [[ $rollback_policy != boot-on && $rollback_policy != stop-boot ]]; then
        derror "rollback: rollback_policy must be boot-on or stop-boot, not '$rollback_policy'"
        return 1
    fi

    # The interpreter, and only the modules the service can import, with bytecode.
    stage=$(mktemp -d "${DRACUT_TMPDIR:-/var/tmp}/rollback-stage.XXXXXX")
    while read -r kind path; do
        case $kind in
            python) inst_binary "$path" && rollback_interpreter=$path && elves+=("$path") ;;
            lib) _rollback_inst_extension "$path" && elves+=("$path") || { derror "rollback: cannot install $path"; return 1; } ;;
            path) paths+="${paths:+, }\"$path\"" ;;
        esac
    done < <("$rollback_python" -I "$moddir/python_closure.py" "$stage") || return 1
    [[ -n $rollback_interpreter ]] || { derror "rollback: could not stage the Python closure"; return 1; }
    # dracut resolves libraries after the modules (DRACUT_RESOLVE_LAZY): libpython, installed here
    while read -r path; do
        inst "$path" && elves+=("$path") || { derror "rollback: cannot install $path"; return 1; }
    done < <(ldd "$rollback_interpreter" | awk '$1 ~ /^libpython/ && $3 ~ /^\// { print $3 }')
    _rollback_strip "${elves[@]}" || { derror "rollback: strip failed"; return 1; }
    # cp -a of "$stage"/. gives $initdir the stage's own mode too: mktemp -d made it 0700, and the
    # initrd's / would be 0700 (services running as other users in the initrd could not reach anything)
    chmod 0755 "$stage"
    cp -a "$stage"/. "$initdir"/
    rm -rf "$stage"

    mkdir -p "$initdir/usr/bin"
    cat > "$initdir/usr/bin/rollback" << EOF
#!/bin/sh
exec $rollback_interpreter -I -S -c 'import sys; sys.path += [$paths]; sys.argv[0] = "rollback"
from rollback.entry import main; main()' "\$@"
EOF
    chmod 0755 "$initdir/usr/bin/rollback"

    [[ -e $rollback_config ]] && inst_simple "$rollback_config" /etc/rollback.toml
    inst_simple "$moddir/units/rollback@.service" "$systemdsystemunitdir/rollback@.service"
    # the early start: imports while the device is awaited; rollback@ triggers it (or runs alone)
    inst_simple "$moddir/units/rollback-early@.service" "$systemdsystemunitdir/rollback-early@.service"
    inst_simple "$moddir/units/rollback-trigger" /usr/lib/rollback/rollback-trigger
    chmod 0755 "$initdir/usr/lib/rollback/rollback-trigger"
    inst_simple "$moddir/units/rollback.catalog" /usr/lib/systemd/catalog/rollback.catalog
    # UUID=, LABEL=, ... as their /dev/disk/by-*/ link: the unit waits for that device unit
    path=$("$rollback_python" -I -c 'import sys; from rollback.devspec import device_path
print(device_path(sys.argv[1]))' "$rollback_device") || {
        derror "rollback: $rollback_python could not map device '$rollback_device' (a path, UUID=, LABEL=, PARTUUID= or PARTLABEL=; and rollback_python must import rollback)"
        return 1
    }
    unit="rollback@$(systemd-escape --path "$path").service"
    if [[ $rollback_policy == stop-boot ]]; then
        inst_simple "$moddir/units/rollback-stop-boot.conf" "$systemdsystemunitdir/rollback@.service.d/stop-boot.conf"
        # sysroot.mount is generated at boot, so `systemctl add-requires` has nothing to attach to
        # here (it silently does nothing): a drop-in makes the root mount require the rollback.
        mkdir -p "$initdir$systemdsystemunitdir/sysroot.mount.d"
        printf '[Unit]\nRequires=%s\nAfter=%s\n' "$unit" "$unit" \
            > "$initdir$systemdsystemunitdir/sysroot.mount.d/rollback.conf"
    fi
    $SYSTEMCTL -q --root "$initdir" add-wants initrd.target "$unit"
}
