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
    # a file that does not read prints why, and fails (it was a traceback, then "no device")
    "$rollback_python" -I -S -c 'import sys, tomllib
try:
    with open(sys.argv[1], "rb") as handle:
        print(tomllib.load(handle).get(sys.argv[2], ""))
except FileNotFoundError:
    pass
except (OSError, ValueError, RecursionError) as error:  # TOMLDecodeError and UnicodeDecodeError: ValueError
    print(f"{sys.argv[1]} cannot be read as TOML ({type(error).__name__}: {error})")
    sys.exit(1)' "$rollback_config" "$1"
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

_rollback_fatal() { # end the whole dracut run: dracut exits 1 and writes no image
    # dracut 059 calls install() in its own shell and ignores its status (module_install in
    # dracut-init.sh): a `return 1` here built an initramfs without rollback and exited 0, e.g. after
    # a distribution upgrade left the venv's python3 unable to import rollback. As dracut's own
    # modules do for a fatal error (00systemd, 95udev-rules): dfatal, then exit; dracut's EXIT trap
    # removes its temporary directory, and the image it would have replaced stays.
    dfatal "rollback: $*"
    dfatal "rollback: no initramfs built: it would not roll back (fix the above, or remove rollback: scripts/install --uninstall)"
    [[ -n ${stage-} ]] && rm -rf -- "$stage"
    exit 1
}

# called by dracut
install() {
    local stage="" kind path paths="" unit closure check elves=()
    rollback_python=${rollback_python:-$(command -v python3)}
    rollback_config=${rollback_config:-/etc/rollback.toml}
    rollback_policy=${rollback_policy:-boot-on}
    command -v "$rollback_python" > /dev/null || _rollback_fatal "rollback_python '$rollback_python' not found (dracut.conf.d)"
    if [[ -z ${rollback_device-} ]]; then
        rollback_device=$(_rollback_setting device) || _rollback_fatal "$rollback_device"
    fi
    if [[ -z $rollback_device ]]; then
        _rollback_fatal "no device: set device in $rollback_config or rollback_device in dracut.conf"
    fi
    if [[ $rollback_policy != boot-on && $rollback_policy != stop-boot ]]; then
        _rollback_fatal "rollback_policy must be boot-on or stop-boot, not '$rollback_policy'"
    fi

    # The interpreter, and only the modules the service can import, with bytecode.
    stage=$(mktemp -d "${DRACUT_TMPDIR:-/var/tmp}/rollback-stage.XXXXXX") || _rollback_fatal "cannot make a staging directory"
    # its output first: `while ... done < <(builder)` never sees the builder's exit status
    closure=$("$rollback_python" -I "$moddir/python_closure.py" "$stage") \
        || _rollback_fatal "$rollback_python could not stage rollback's Python closure (its error above; rollback_python must import rollback: after an upgrade of Python, run scripts/install again)"
    rollback_interpreter=""
    while read -r kind path; do
        case $kind in
            python) inst_binary "$path" && rollback_interpreter=$path && elves+=("$path") ;;
            lib) _rollback_inst_extension "$path" && elves+=("$path") || _rollback_fatal "cannot install $path" ;;
            path) paths+="${paths:+, }\"$path\"" ;;
        esac
    done <<< "$closure"
    [[ -n $rollback_interpreter ]] || _rollback_fatal "could not install the Python interpreter"
    # dracut resolves libraries after the modules (DRACUT_RESOLVE_LAZY): libpython, installed here
    while read -r path; do
        inst "$path" && elves+=("$path") || _rollback_fatal "cannot install $path"
    done < <(ldd "$rollback_interpreter" | awk '$1 ~ /^libpython/ && $3 ~ /^\// { print $3 }')
    _rollback_strip "${elves[@]}" || _rollback_fatal "strip failed"
    # cp -a of "$stage"/. gives $initdir the stage's own mode too: mktemp -d made it 0700, and the
    # initrd's / would be 0700 (services running as other users in the initrd could not reach anything)
    chmod 0755 "$stage"
    cp -a "$stage"/. "$initdir"/ || _rollback_fatal "cannot copy the staged closure into $initdir"
    rm -rf -- "$stage"
    stage=""

    mkdir -p "$initdir/usr/bin"
    cat > "$initdir/usr/bin/rollback" << EOF
#!/bin/sh
exec $rollback_interpreter -I -S -c 'import sys; sys.path += [$paths]; sys.argv[0] = "rollback"
from rollback.entry import main; main()' "\$@"
EOF
    chmod 0755 "$initdir/usr/bin/rollback"

    # UUID=, LABEL=, ... as their /dev/disk/by-*/ link: the unit waits for that device unit
    path=$("$rollback_python" -I -c 'import sys; from rollback.devspec import device_path
print(device_path(sys.argv[1]))' "$rollback_device") \
        || _rollback_fatal "$rollback_python could not map device '$rollback_device' (a path, UUID=, LABEL=, PARTUUID= or PARTLABEL=; and rollback_python must import rollback)"
    # dracut.conf's kernel_cmdline goes to the image's /etc/cmdline.d, which only dracut's own hooks
    # read; rollback reads the kernel's command line (/proc/cmdline) alone. In a unified kernel image
    # (uefi=yes) it is the image's .cmdline section, the kernel's command line: checked with the file.
    cmdline=/dev/null
    if [[ " ${kernel_cmdline-} " =~ [[:space:]](rd\.)?rollback\. ]]; then
        if [[ ${uefi-} == yes ]]; then
            cmdline="$DRACUT_TMPDIR/rollback-kernel-cmdline"
            printf '%s\n' "$kernel_cmdline" > "$cmdline" || _rollback_fatal "cannot write $cmdline"
        else
            dwarn "rollback: kernel_cmdline (dracut.conf) holds rollback.* options, which rollback never reads: put them in the boot loader's command line, or their settings in $rollback_config"
        fi
    fi
    # The settings as the boot reads them (the file, and a UKI's command line), by the CLI the
    # initramfs runs (its launcher, interpreter and sys.path; the bytecode staged from these sources):
    # an invalid setting fails the build here instead of every boot (exit 2: nothing rolled back;
    # under stop-boot, no boot at all).
    config=/dev/null checked="the settings"
    [[ -e $rollback_config || -L $rollback_config ]] && config=$rollback_config checked=$rollback_config
    [[ $cmdline != /dev/null ]] && checked+=" with kernel_cmdline (dracut.conf)"
    check=$(ROLLBACK_LOG_TARGET=console sh "$initdir/usr/bin/rollback" config --config "$config" \
        --kernel-cmdline "$cmdline" --device "$path" 2>&1 > /dev/null)
    case $? in
        0) ;;
        2) _rollback_fatal "$checked is invalid, and every boot would refuse it (exit 2): $check" ;;
        *) _rollback_fatal "the initramfs's rollback CLI does not run ($initdir/usr/bin/rollback config): $check" ;;
    esac
    if [[ -e $rollback_config ]]; then
        inst_simple "$rollback_config" /etc/rollback.toml || _rollback_fatal "cannot install $rollback_config"
    fi
    inst_simple "$moddir/units/rollback@.service" "$systemdsystemunitdir/rollback@.service" \
        || _rollback_fatal "cannot install $moddir/units/rollback@.service"
    # the early start: imports while the device is awaited; rollback@ triggers it (or runs alone)
    inst_simple "$moddir/units/rollback-early@.service" "$systemdsystemunitdir/rollback-early@.service" \
        || _rollback_fatal "cannot install $moddir/units/rollback-early@.service"
    inst_simple "$moddir/units/rollback-trigger" /usr/lib/rollback/rollback-trigger \
        && chmod 0755 "$initdir/usr/lib/rollback/rollback-trigger" \
        || _rollback_fatal "cannot install $moddir/units/rollback-trigger"
    inst_simple "$moddir/units/rollback.catalog" /usr/lib/systemd/catalog/rollback.catalog \
        || _rollback_fatal "cannot install $moddir/units/rollback.catalog"
    escaped=$(systemd-escape --path "$path") || _rollback_fatal "systemd-escape --path $path failed"
    unit="rollback@$escaped.service"
    # Its device unit waits as long as dracut lets root='s wait: rd.timeout, none when unset (dracut's
    # rootfs generator); systemd-cryptsetup gives a mapper device none either. Any other spelling of the
    # same filesystem (UUID= where root=/dev/mapper/vg-root) had the default 90 s: a LUKS passphrase
    # typed later failed rollback@ (stop-boot: emergency mode; else the old root booted). A generator,
    # as rd.timeout is read at boot: it bounds a device that never appears, as it does a wrong root=
    # (said here when building for a device this machine does not have).
    [[ -e $path ]] || dwarn "rollback: $path does not exist on this machine: a boot from this image waits for it as long as for root= (rd.timeout; no limit when unset): check rollback_device / device in $rollback_config"
    generator="$initdir$systemdutildir/system-generators/rollback-device-timeout"
    mkdir -p "${generator%/*}" || _rollback_fatal "cannot make ${generator%/*}"
    cat > "$generator" << GENERATOR || _rollback_fatal "cannot write $generator"
#!/bin/sh
# rollback's device waits as long as root= does: rd.timeout, or no limit (dracut's 90rollback wrote this)
timeout=infinity
read -r cmdline < /proc/cmdline
for word in \$cmdline; do
    case \$word in rd.timeout=*) timeout=\${word#rd.timeout=} ;; esac
done
case \$timeout in '' | *[!0-9a-z.]*) timeout=infinity ;; esac
mkdir -p "\$1/$escaped.device.d" &&
    printf '[Unit]\\nJobTimeoutSec=%s\\nJobRunningTimeoutSec=%s\\n' "\$timeout" "\$timeout" > "\$1/$escaped.device.d/rollback.conf"
GENERATOR
    chmod 0755 "$generator" || _rollback_fatal "cannot make $generator executable"
    if [[ $rollback_policy == stop-boot ]]; then
        inst_simple "$moddir/units/rollback-stop-boot.conf" "$systemdsystemunitdir/rollback@.service.d/stop-boot.conf" \
            || _rollback_fatal "cannot install $moddir/units/rollback-stop-boot.conf"
        # sysroot.mount is generated at boot, so `systemctl add-requires` has nothing to attach to
        # here (it silently does nothing): a drop-in makes the root mount require the rollback.
        mkdir -p "$initdir$systemdsystemunitdir/sysroot.mount.d" || _rollback_fatal "cannot make sysroot.mount.d"
        printf '[Unit]\nRequires=%s\nAfter=%s\n' "$unit" "$unit" \
            > "$initdir$systemdsystemunitdir/sysroot.mount.d/rollback.conf" \
            || _rollback_fatal "cannot write the sysroot.mount drop-in"
    fi
    $SYSTEMCTL -q --root "$initdir" add-wants initrd.target "$unit" \
        || _rollback_fatal "systemctl add-wants initrd.target $unit failed"
}
