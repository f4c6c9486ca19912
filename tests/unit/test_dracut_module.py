"""The dracut module's shell helpers, run with dracut's install functions stubbed out."""

from __future__ import annotations
import __future__

import argparse
import dis
import encodings
import glob
import importlib.util
import marshal
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pystemd.utils
import pytest
import structlog
import structlog.processors

import rollback.plan
from tests.support.environment import unavailable

MODULE_SETUP = Path(__file__).parents[2] / "packaging" / "dracut" / "90rollback" / "module-setup.sh"


def installed_for(extension: str) -> list[str]:
    """What _rollback_inst_extension asks dracut to install for one C extension."""
    script = f'inst() {{ echo "$1"; }}\n. "{MODULE_SETUP}"\n_rollback_inst_extension "$1"\n'
    result = subprocess.run(["bash", "-c", script, "bash", extension], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_an_extension_brings_the_libraries_it_links_even_when_not_executable() -> None:
    """Debian ships lib-dynload modules 0644, and dracut-install resolves dependencies only for
    executable files: the initramfs booted without libffi until the module resolved them itself."""
    found = glob.glob("/usr/lib/python3*/lib-dynload/_ctypes.cpython-*.so")
    if not found:
        unavailable("no Debian python3 _ctypes module here (Debian 12 always has one)")
    extension = found[0]
    assert not os.stat(extension).st_mode & 0o111  # the case dracut-install leaves alone
    installed = installed_for(extension)
    assert installed[0] == extension
    assert any(Path(lib).name.startswith("libffi.so") for lib in installed[1:]), installed


def test_our_elf_files_are_installed_without_symbol_tables(tmp_path: Path) -> None:
    """dracut strips debug info only: pyenv's libpython kept 0.3 MB (zstd) of symbols in the initramfs.
    The module strips what it installed (through a symlink, as the interpreter's libraries are named)."""
    source = tmp_path / "lib.c"
    source.write_text(
        "int visible(void) { return 1; }\nstatic int local(void) { return 2; }\nint use(void) { return local(); }\n"
    )
    built = tmp_path / "built" / "libexample.so.1.0"
    built.parent.mkdir()
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(built), str(source)], check=True)
    (tmp_path / "built" / "libexample.so.1").symlink_to(built.name)
    initdir = tmp_path / "initramfs"
    installed = initdir / str(built).lstrip("/")
    installed.parent.mkdir(parents=True)
    installed.write_bytes(built.read_bytes())

    def sections(path: Path) -> str:
        return subprocess.run(["readelf", "-S", str(path)], capture_output=True, text=True, check=True).stdout

    assert ".symtab" in sections(installed)
    script = f'. "{MODULE_SETUP}"\n_rollback_strip "$@"\n'
    argv = [str(tmp_path / "built" / "libexample.so.1"), str(tmp_path / "absent.so")]
    subprocess.run(["bash", "-c", script, "bash", *argv], env={**os.environ, "initdir": str(initdir)}, check=True)
    assert ".symtab" not in sections(installed) and ".dynsym" in sections(installed)
    assert ".symtab" in sections(built)  # the system's own file is left alone


BUILDER = MODULE_SETUP.parent / "python_closure.py"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The closure as the dracut module stages it (python_closure.py STAGE_DIR), and what it printed."""
    stage = tmp_path_factory.mktemp("stage")
    built = subprocess.run([sys.executable, "-I", str(BUILDER), str(stage)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return stage, built.stdout.splitlines()


def test_the_staged_bytecode_keeps_lines_asserts_and_class_docstrings_only(staged: tuple[Path, list[str]]) -> None:
    """Column positions and module and function docstrings were a third of the bytecode (the initramfs
    0.40 MB smaller) and nothing reads them at boot. Asserts are checks, and a dataclass without its
    docstring computes one with inspect at import: those stay, and tracebacks keep their lines."""
    source = Path(__file__).parents[2] / "rollback" / "plan.py"
    data = (staged[0] / str(source).lstrip("/")).with_suffix(".pyc").read_bytes()
    assert data[:4] == importlib.util.MAGIC_NUMBER and data[4:8] == (1).to_bytes(4, "little")  # unchecked hash
    module = marshal.loads(data[16:])
    codes = {code.co_name: code for code in _code_objects(module)}
    assert module.co_filename == str(source)
    assert all(column is None for code in codes.values() for _, _, column, _ in code.co_positions())
    strings = {c for code in codes.values() for c in code.co_consts if isinstance(c, str)}
    assert not any(s.startswith("Archived roots retention removes") for s in strings)  # prune_paths'
    assert not any(s.startswith("Config + observation -> a plan") for s in strings)  # the module's
    assert "How far a run that leaves the delete to the cleanup" in str(codes["Bounds"].co_consts)
    lines = source.read_text().splitlines()
    line = 1 + lines.index("    assert entry is not None  # Observation.entries lists only parsed names")
    found = {(i.opname, i.positions and i.positions.lineno) for i in dis.get_instructions(codes["_entry_stamp"])}
    assert ("LOAD_ASSERTION_ERROR", line) in found


def test_each_module_is_compiled_with_its_own_future_imports_only(staged: tuple[Path, list[str]]) -> None:
    """The builder's own `from __future__ import annotations` must not leak into what it compiles
    (compile() inherits the caller's future flags unless told not to)."""
    flag = __future__.annotations.compiler_flag

    def flags(path: str) -> int:
        return int(marshal.loads((staged[0] / path.lstrip("/")).read_bytes()[16:]).co_flags)

    assert flags(str(Path(argparse.__file__).with_suffix(".pyc"))) & flag == 0
    assert flags(str(Path(__file__).parents[2] / "rollback" / "plan.pyc")) & flag


def test_the_build_fails_unless_the_staged_bytecode_runs(staged: tuple[Path, list[str]], tmp_path: Path) -> None:
    """The build's import check runs the sources; the stage check runs the bytecode that ships, with
    the C extensions dracut installs: a staged module missing or unreadable fails it, one the
    interpreter loads at start-up (encodings) or one only pystemd's loading reaches included, and so
    does an extension the build would not install."""
    spec = importlib.util.spec_from_file_location("python_closure", BUILDER)
    assert spec and spec.loader
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    entries = [line.split(" ", 1)[1] for line in staged[1] if line.startswith("path ")]
    extensions = [line.split(" ", 1)[1] for line in staged[1] if line.startswith("lib ")]
    builder.check_stage(str(staged[0]), entries, extensions)  # what the build just checked

    def staged_as(module: types.ModuleType) -> str:
        return str(Path(str(module.__file__)).with_suffix(".pyc")).lstrip("/")

    plan, processors = staged_as(rollback.plan), staged_as(structlog.processors)
    encodings_init, pystemd_utils = staged_as(encodings), staged_as(pystemd.utils)
    spoilt = [(plan, "remove"), (plan, "magic"), (processors, "remove"), (encodings_init, "magic")]
    for victim, spoil in [*spoilt, (pystemd_utils, "magic")]:
        copy = tmp_path / f"{spoil}-{victim.replace('/', '_')}"
        shutil.copytree(staged[0], copy, symlinks=True)
        if spoil == "remove":
            (copy / victim).unlink()
        else:
            (copy / victim).write_bytes(b"\0\0\0\0" + (copy / victim).read_bytes()[4:])
        with pytest.raises(SystemExit, match="the staged bytecode does not run"):
            builder.check_stage(str(copy), entries, extensions)
    without = [path for path in extensions if "btrfsutil" not in Path(path).name]
    assert len(without) == len(extensions) - 1
    with pytest.raises(SystemExit, match="the staged bytecode does not run"):
        builder.check_stage(str(staged[0]), entries, without)


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _code_objects(constant)


# install() as dracut 059 runs it (module_install in dracut-init.sh): sourced into dracut's own shell
# after `chmod 755 "$initdir"`, its status ignored, the build going on. dracut's install functions are
# stubbed (the files they would copy are not needed here); the Python closure is staged for real.
DRACUT = """
derror() { echo "E: $*" >&2; }
dfatal() { echo "F: $*" >&2; }
dwarn() { echo "W: $*" >&2; }
dinfo() { :; }
inst() { :; }
inst_binary() { :; }
inst_simple() { mkdir -p "$initdir$(dirname "${2:-$1}")" && cp -L "$1" "$initdir${2:-$1}"; }
SYSTEMCTL="echo systemctl"
systemdsystemunitdir=/usr/lib/systemd/system
systemdutildir=/usr/lib/systemd
mkdir -p "$initdir" && chmod 755 "$initdir"
. "$1"
moddir=$(dirname "$1") install
echo "dracut went on and wrote the image"
"""


def dracut_install(tmp_path: Path, config: str | None, **settings: str) -> subprocess.CompletedProcess[str]:
    """Run install() into tmp_path/initramfs; `config` is /etc/rollback.toml's text (None: no file)."""
    conf = tmp_path / "rollback.toml"
    if config is not None:
        conf.write_text(config)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "initdir": str(tmp_path / "initramfs"),
        "DRACUT_TMPDIR": str(tmp_path / "tmp"),
        "rollback_python": sys.executable,
        "rollback_config": str(conf),
        **settings,
    }
    return subprocess.run(["bash", "-c", DRACUT, "dracut", str(MODULE_SETUP)], env=env, capture_output=True, text=True)


def test_the_initramfs_root_keeps_mode_0755(tmp_path: Path) -> None:
    """cp -a of the stage's `.` gave $initdir the mktemp -d directory's 0700 after dracut's chmod 755:
    the cpio's `.` entry then made the initrd's / 0700, closed to every service not running as root."""
    built = dracut_install(tmp_path, 'device = "/dev/vda"\n')
    assert built.returncode == 0 and "dracut went on" in built.stdout, built.stderr
    assert (tmp_path / "initramfs" / "usr/bin/rollback").exists()
    assert (tmp_path / "initramfs").stat().st_mode & 0o7777 == 0o755


def _base_interpreter() -> str:
    """An interpreter that cannot import rollback: the venv's base, as a venv's python3 link becomes
    after a distribution upgrade (Debian 12 -> 13: 3.13, the packages under lib/python3.11)."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = subprocess.run([str(base), "-I", "-c", "import rollback"], capture_output=True)
    if found.returncode == 0:
        unavailable(f"{base} imports rollback")
    return str(base)


FATAL = {
    "the interpreter cannot import rollback": ('device = "/dev/vda"\n', {"rollback_python": "base"}),
    "no interpreter": ('device = "/dev/vda"\n', {"rollback_python": "/nonexistent/python3"}),
    "no device": ("", {}),
    "an unknown policy": ('device = "/dev/vda"\n', {"rollback_policy": "maybe"}),
    "an invalid config file": ('device = "/dev/vda"\nmode = "bogus"\n', {}),
    "a device that names nothing": ('device = "sda"\n', {}),
}


@pytest.mark.parametrize("case", FATAL)
def test_a_failure_in_install_fails_the_dracut_run(case: str, tmp_path: Path) -> None:
    """dracut 059 ignores install()'s status: `return 1` built an initramfs without rollback and dracut
    exited 0 (a kernel update's postinst then silently dropped the rollback, and stop-boot's guarantee
    with it). A failure must end the run, no image written, with the reason; and an invalid
    /etc/rollback.toml must fail the build, not exit 2 at every boot."""
    config, settings = FATAL[case]
    settings = {k: _base_interpreter() if v == "base" else v for k, v in settings.items()}
    built = dracut_install(tmp_path, config, **settings)
    assert built.returncode == 1, built.stdout + built.stderr
    assert "dracut went on" not in built.stdout
    assert "F: rollback: " in built.stderr and "no initramfs built" in built.stderr
    assert not list((tmp_path / "tmp").glob("rollback-stage.*"))  # the stage is removed


def test_the_build_names_what_is_wrong_in_the_config_file(tmp_path: Path) -> None:
    built = dracut_install(tmp_path, 'device = "/dev/vda"\nmode = "bogus"\n')
    assert "is invalid, and every boot would refuse it (exit 2)" in built.stderr
    assert "mode 'bogus' is not one of recreate, snapshot" in built.stderr, built.stderr


@pytest.mark.parametrize("content", [b'device = "/dev/vda"\nmode = \n', b'device = "/dev/\xff"\n'])
def test_a_config_file_that_is_not_toml_is_named_so_not_as_no_device(tmp_path: Path, content: bytes) -> None:
    """The device was read with a bare tomllib.load: a traceback, then "no device: set device in ...",
    for a file that does set one."""
    (tmp_path / "rollback.toml").write_bytes(content)
    built = dracut_install(tmp_path, None)
    assert built.returncode == 1 and "dracut went on" not in built.stdout
    assert "rollback.toml cannot be read as TOML" in built.stderr, built.stderr
    assert "no device" not in built.stderr and "Traceback" not in built.stderr


def test_rollback_options_in_dracuts_kernel_cmdline_are_warned_about(tmp_path: Path) -> None:
    """dracut writes kernel_cmdline into the image's /etc/cmdline.d, which rollback (reading
    /proc/cmdline) never sees: rollback.mode=snapshot there would silently not apply."""
    built = dracut_install(tmp_path, 'device = "/dev/vda"\n', kernel_cmdline="quiet rollback.mode=snapshot")
    assert built.returncode == 0 and "W: rollback: kernel_cmdline (dracut.conf) holds rollback.*" in built.stderr
    quiet = dracut_install(tmp_path, 'device = "/dev/vda"\n', kernel_cmdline="quiet norollback.x=1")
    assert quiet.returncode == 0 and "W: rollback" not in quiet.stderr


def test_rollback_options_in_a_unified_kernel_images_cmdline_are_checked_not_warned_about(tmp_path: Path) -> None:
    """uefi=yes: dracut puts kernel_cmdline in the image's .cmdline section, which the kernel boots with
    (systemd-stub ignores the boot loader's under Secure Boot): rollback reads it, so the build checks
    it with the config file instead of telling the user to move it (found by a reviewer)."""
    good = dracut_install(tmp_path, 'device = "/dev/vda"\n', kernel_cmdline="quiet rollback.mode=snapshot", uefi="yes")
    assert good.returncode == 0 and "W: rollback" not in good.stderr, good.stderr
    bad = dracut_install(tmp_path, 'device = "/dev/vda"\n', kernel_cmdline="quiet rollback.mode=bogus", uefi="yes")
    assert bad.returncode == 1 and "every boot would refuse it (exit 2)" in bad.stderr, bad.stderr
    assert "rollback.mode" in bad.stderr or "bogus" in bad.stderr
    assert "with kernel_cmdline (dracut.conf) is invalid" in bad.stderr
    # rd.rollback.* is read at boot (in the initrd) too; and with no config file the command line is checked
    rd = dracut_install(tmp_path, 'device = "/dev/vda"\n', kernel_cmdline="quiet rd.rollback.keep_days=abc", uefi="yes")
    assert rd.returncode == 1 and "every boot would refuse it (exit 2)" in rd.stderr, rd.stderr
    (tmp_path / "rollback.toml").unlink()
    uki = {"kernel_cmdline": "quiet rollback.mode=bogus", "uefi": "yes", "rollback_device": "/dev/vda"}
    alone = dracut_install(tmp_path, None, **uki)
    assert alone.returncode == 1 and "the settings with kernel_cmdline (dracut.conf) is invalid" in alone.stderr


def test_a_valid_config_file_is_installed_and_the_unit_wanted(tmp_path: Path) -> None:
    built = dracut_install(tmp_path, 'device = "LABEL=root"\nmode = "snapshot"\n', rollback_policy="stop-boot")
    assert built.returncode == 0 and "dracut went on" in built.stdout, built.stderr
    initdir = tmp_path / "initramfs"
    assert (initdir / "etc/rollback.toml").read_text().endswith('mode = "snapshot"\n')
    unit = "rollback@dev-disk-by\\x2dlabel-root.service"
    assert f"add-wants initrd.target {unit}" in built.stdout
    assert unit in (initdir / "usr/lib/systemd/system/sysroot.mount.d/rollback.conf").read_text()


@pytest.mark.parametrize(
    ("words", "timeout"),
    [
        ("quiet", "infinity"),
        ("quiet rd.timeout=60 ro", "60"),
        ("rd.timeout=0", "0"),
        ("rd.timeout=$(reboot)", "infinity"),
    ],
)
def test_the_devices_unit_waits_as_long_as_dracut_lets_roots(tmp_path: Path, words: str, timeout: str) -> None:
    """dracut gives root='s device unit rd.timeout, no limit when unset; any other spelling of the same
    filesystem (the installer writes UUID=, GRUB root=/dev/mapper/vg-root) had systemd's 90 s: a LUKS
    passphrase typed later failed rollback@ (stop-boot: emergency mode; else the old root booted). A
    generator writes the drop-in from the boot's own command line (a unit reviewer's finding; a fixed
    "no limit" hung a boot whose device never appears with no way out: rd.timeout is that way)."""
    built = dracut_install(tmp_path, 'device = "UUID=0b3c-1"\n', rollback_policy="stop-boot")
    assert built.returncode == 0, built.stderr
    generator = tmp_path / "initramfs/usr/lib/systemd/system-generators/rollback-device-timeout"
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(words + "\n")
    out = tmp_path / "generated"
    out.mkdir()
    script = 'mount --bind "$1" /proc/cmdline && exec sh "$2" "$3" "$3" "$3"'
    argv = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(cmdline),
        str(generator),
        str(out),
    ]
    ran = subprocess.run(argv, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    dropin = out / "dev-disk-by\\x2duuid-0b3c\\x2d1.device.d/rollback.conf"
    assert dropin.read_text() == f"[Unit]\nJobTimeoutSec={timeout}\nJobRunningTimeoutSec={timeout}\n"
    assert "rollback@dev-disk-by\\x2duuid-0b3c\\x2d1.service" in built.stdout
    # a device not on the building machine then holds the boot as a wrong root= does: said at build time
    assert "/dev/disk/by-uuid/0b3c-1 does not exist on this machine" in built.stdout + built.stderr
