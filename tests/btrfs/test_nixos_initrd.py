"""What make-initrd-ng would put in the NixOS initrd, replayed offline, and the service run from it.

make-initrd-ng (nixpkgs pkgs/build-support/kernel/make-initrd-ng) copies the store paths it is
given (a directory whole), for each ELF file its PT_INTERP and DT_NEEDED libraries, and symlink
targets; it follows no Nix reference, no `#!` interpreter, no path named in a script. The tree that
packaging/nix/initrd-tree.nix builds (python_closure.py --tree) must run from exactly that.

Replay, here on Debian: the tree is built with the project's interpreter at a store-like prefix;
the root holds the tree and its ELF dependencies only (resolved with ldd: Debian's libraries have
no RUNPATH, so the loader's default directories stand in for it); the unit's ExecStart runs in a
chroot of it. The negative control is what the package shipped before: a console script whose
interpreter and modules make-initrd-ng never copies.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollback.errors import Exit
from tests.support.environment import require_root

pytestmark = pytest.mark.btrfs

ROOT = Path(__file__).parents[2]
BUILDER = ROOT / "packaging/dracut/90rollback/python_closure.py"
PREFIX = "/nix/store/" + "0" * 32 + "-rollback-initrd-0.1.0"
DEVICE = "/dev/disk/by-label/nixos"


@pytest.fixture(scope="module", params=["venv", "wrapped-env"])
def initrd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A root holding what make-initrd-ng would copy for storePaths = [ the tree ], plus the
    /etc/rollback.toml the NixOS module writes. The tree is built by the project's interpreter, or
    through an environment like nixpkgs' withPackages: its bin/pythonX.Y a wrapper that execs the real
    interpreter, its prefix (sys.prefix == sys.base_prefix) the environment's own."""
    require_root("chroot", "patchelf", "strip", "zstd", "tar", "gcc")
    work = tmp_path_factory.mktemp("nixos-initrd")
    staged, root = work / "staged", work / "root"
    python = sys.executable if request.param == "venv" else wrapped_env(work / "env")
    built = subprocess.run(
        [python, "-I", str(BUILDER), "--tree", PREFIX, "--destdir", str(staged), "--units", str(ROOT / "units")],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    make_initrd_ng(staged, [PREFIX], root)
    add_bash(root)  # upstream's initrd has /bin/bash (boot.initrd.systemd.initrdBin), for rollback-trigger
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the initrd's devtmpfs has it
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/rollback.toml").write_text(f'device = "{DEVICE}"\n')
    (root / "etc/cmdline").write_text("rollback.subvolume=rootfs\n")
    yield root


def wrapped_env(env: Path) -> str:
    """An environment as nixpkgs' python3.withPackages makes it (makeBinaryWrapper --inherit-argv0):
    lib/pythonX.Y links to the stdlib and the venv's site-packages, bin/pythonX.Y execs the real one."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    lib = env / "lib" / version
    lib.mkdir(parents=True)
    for entry in Path(sysconfig.get_paths()["stdlib"]).iterdir():
        if entry.name != "site-packages":
            (lib / entry.name).symlink_to(entry)
    (lib / "site-packages").symlink_to(sysconfig.get_paths()["purelib"])
    (env / "lib/python3/dist-packages").parent.mkdir()  # where Debian's site.py looks instead
    (env / "lib/python3/dist-packages").symlink_to(sysconfig.get_paths()["purelib"])
    return compile_wrapper(env / "bin" / version, os.path.realpath(f"{sysconfig.get_config_var('BINDIR')}/{version}"))


def compile_wrapper(where: Path, real: str) -> str:
    where.parent.mkdir(parents=True, exist_ok=True)
    source = where.parent / "wrapper.c"
    source.write_text(f'#include <unistd.h>\nint main(int c, char **v) {{ execv("{real}", v); return 127; }}\n')
    subprocess.run(["gcc", "-O2", "-o", str(where), str(source)], check=True)
    source.unlink()
    return str(where)


def closure_builder() -> Any:
    """packaging/dracut/90rollback/python_closure.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("python_closure", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_bash(root: Path) -> None:
    (root / "bin").mkdir(exist_ok=True)
    shutil.copy2(os.path.realpath("/bin/bash"), root / "bin/bash")
    queue = [root / "bin/bash"]
    while queue:
        for library in elf_dependencies(queue.pop(), root, set()):
            queue += [p for p in copy_with_targets(Path(library), root) if is_elf(p)]


def make_initrd_ng(source: Path, store_paths: list[str], root: Path) -> None:
    """Copy each store path whole, then for every ELF file its interpreter and DT_NEEDED libraries,
    transitively, each at its own path with symlink targets. Nothing else. A library is looked up in
    the file's RUNPATH, as make-initrd-ng does; Debian's own libraries have none, so they (and only
    libraries the tree does not ship) are looked up in the loader's default directories instead."""
    for store_path in store_paths:
        shutil.copytree(f"{source}{store_path}", f"{root}{store_path}", symlinks=True)
    shipped = {p.name for p in root.rglob("*") if p.is_file()}
    queue = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink() and is_elf(p)]
    while queue:
        for library in elf_dependencies(queue.pop(), root, shipped):
            copied = copy_with_targets(Path(library), root)
            queue += [p for p in copied if is_elf(p)]


def is_elf(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == b"\x7fELF"


def patchelf(*args: str) -> list[str]:
    found = subprocess.run(["patchelf", *args], capture_output=True, text=True)
    return found.stdout.split() if found.returncode == 0 else []


def elf_dependencies(path: Path, root: Path, shipped: set[str]) -> list[str]:
    """Host paths of what `path` (inside `root`) needs: its interpreter and each DT_NEEDED, resolved."""
    found = [p for p in patchelf("--print-interpreter", str(path))]
    runpath = [d for d in ":".join(patchelf("--print-rpath", str(path))).split(":") if d]
    for needed in patchelf("--print-needed", str(path)):
        in_runpath = [
            f"{d}/{needed}" for d in runpath if Path(f"{root}{d}/{needed}").exists() or Path(f"{d}/{needed}").exists()
        ]
        if in_runpath:
            found.append(in_runpath[0])
            continue
        assert needed not in shipped, f"{path}: the tree ships {needed} but its RUNPATH {runpath} does not lead there"
        default = [f"{d}/{needed}" for d in DEFAULT_DIRS if Path(f"{d}/{needed}").exists()]
        assert default, f"{path}: {needed} not found"
        found.append(default[0])
    return found


DEFAULT_DIRS = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"]


def copy_with_targets(path: Path, root: Path) -> list[Path]:
    """Copy a host file (and, for a symlink, its target) to the same path in `root`: the copies made."""
    target = Path(f"{root}{path}")
    if target.exists() or target.is_symlink():
        return []
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        link = os.readlink(path)
        target.symlink_to(link)
        return copy_with_targets(path.parent / link if not os.path.isabs(link) else Path(link), root)
    shutil.copy2(path, target)
    return [target]


INSTANCE = "dev-disk-by\\x2dlabel-nixos"  # systemd-escape --path DEVICE


def exec_start(root: Path, unit: str = "rollback@.service") -> list[str]:
    """A unit's ExecStart for the instance of DEVICE, as systemd expands %I and %i."""
    text = (root / PREFIX.lstrip("/") / "lib/systemd/system" / unit).read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=").replace("/%I", DEVICE).replace("%i", INSTANCE).split()


def in_chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/nonexistent", "LANG": "C.UTF-8"}
    chroot = shutil.which("chroot") or "chroot"
    return subprocess.run([chroot, str(root), *argv], capture_output=True, text=True, env=env, timeout=60)


def test_the_units_command_alone_runs_the_boot_path_to_its_first_check(initrd: Path) -> None:
    """rollback@'s ExecStart as systemd runs it, without the early unit: the trigger runs the command
    itself, through the whole boot path up to the device probe, which refuses (no device in this
    chroot): exit 3, the refusal logged. Nothing is missing from the initrd."""
    result = in_chroot(initrd, *exec_start(initrd), "--kernel-cmdline", "/etc/cmdline")
    assert result.returncode == Exit.REFUSED, result.stderr
    assert f"device {DEVICE} does not exist" in result.stderr and "reason=no-device" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_early_unit_and_the_trigger_run_it_together(initrd: Path) -> None:
    """Both units' commands as systemd starts them: the early one imports and waits, the device-ordered
    one triggers it and exits with its status (3 here: no device in this chroot)."""
    (initrd / "run").mkdir(exist_ok=True)
    chroot = shutil.which("chroot") or "chroot"
    env = {"PATH": "/nonexistent", "LANG": "C.UTF-8"}
    argv = [chroot, str(initrd), *exec_start(initrd, "rollback-early@.service"), "--kernel-cmdline", "/etc/cmdline"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as early:
        pid_file = initrd / "run/rollback/standby" / INSTANCE / "pid"
        deadline = time.monotonic() + 60
        while not pid_file.exists():
            assert early.poll() is None and time.monotonic() < deadline, early.communicate()
            time.sleep(0.02)
        trigger = subprocess.Popen(
            [chroot, str(initrd), *exec_start(initrd), "--kernel-cmdline", "/etc/cmdline"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            _, trigger_log = trigger.communicate(timeout=60)
            _, early_log = early.communicate(timeout=60)
        finally:
            early.kill()
    assert (early.returncode, trigger.returncode) == (Exit.REFUSED, Exit.REFUSED), (early_log, trigger_log)
    assert "reason=no-device" in early_log and trigger_log == ""  # the early process did it, alone


def test_help_and_config_run_from_the_initrd(initrd: Path) -> None:
    launcher = f"{PREFIX}/bin/rollback"
    shown = in_chroot(initrd, launcher, "--help")
    assert shown.returncode == 0 and "exit codes" in shown.stdout, shown.stderr
    config = in_chroot(initrd, launcher, "config", "--json", "--kernel-cmdline", "/etc/cmdline")
    assert config.returncode == 0, config.stderr
    settings = json.loads(config.stdout)["settings"]
    assert (settings["device"], settings["subvolume"]) == (DEVICE, "rootfs")


def test_every_module_of_the_boot_path_imports_from_the_tree_alone(initrd: Path) -> None:
    script = (
        "import sys, rollback.entry, rollback.cli, rollback.verbs, rollback.effects.btrfs, rollback.effects.device, "
        "rollback.effects.mount, rollback.effects.journal, rollback.report, pystemd.journal, pystemd.daemon\n"
        f"bad = [m for m in sys.modules.values() if getattr(m, '__file__', None) "
        f"and not m.__file__.startswith('{PREFIX}/')]\nprint(bad)"
    )
    result = in_chroot(initrd, f"{PREFIX}/bin/python3", "-I", "-S", "-c", script)
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr


def test_nothing_in_the_tree_names_a_path_outside_it(initrd: Path) -> None:
    """What Nix would take as references (disallowedReferences in initrd-tree.nix): the interpreter's
    prefix, the venv, the checkout. No text or bytecode names one, and no RUNPATH. Other strings in
    ELF files (a compiled-in build prefix, source file names) are fallbacks that Nix blanks
    (remove-references-to); the runs above prove them unused."""
    tree = initrd / PREFIX.lstrip("/")
    # a distribution's interpreter lives in /usr: a string every stdlib module has, and never a store path
    outside = {p for p in (sys.base_prefix, sys.prefix, str(ROOT)) if p not in ("/", "/usr", "/usr/local")}
    files = [p for p in tree.rglob("*") if p.is_file()]
    elf = {p for p in files if p.read_bytes()[:4] == b"\x7fELF"}
    named = [
        str(p.relative_to(tree)) for p in files if p not in elf and any(o.encode() in p.read_bytes() for o in outside)
    ]
    assert named == []
    runpaths = {str(p.relative_to(tree)): runpath(p) for p in elf}
    shared = list(tree.glob("lib/libpython*"))  # a shared libpython is found in the tree, first
    assert runpaths["bin/python3"].startswith(f"{PREFIX}/lib:") if shared else runpaths["bin/python3"] == "\n"
    assert [(p, r) for p, r in runpaths.items() if any(o in r for o in outside)] == []


def runpath(path: Path) -> str:
    return subprocess.run(["patchelf", "--print-rpath", str(path)], capture_output=True, text=True, check=True).stdout


def test_the_size_of_what_the_initrd_gains(initrd: Path) -> None:
    """Reported, not asserted against time: files and bytes of the tree and of its ELF dependencies,
    and the tree compressed as NixOS compresses its initrd: zstd -10 (boot.initrd.compressor's default
    on kernels >= 5.9, with nixpkgs' initrd-compressor-meta.nix defaultArgs)."""
    tree = initrd / PREFIX.lstrip("/")
    files = [p for p in tree.rglob("*") if p.is_file()]
    libraries = [p for p in initrd.rglob("*") if p.is_file() and not str(p).startswith(str(tree)) and ".so" in p.name]
    packed = zstd_mb(initrd, PREFIX.lstrip("/"))
    report: dict[str, object] = {
        "tree_files": len(files),
        "tree_mb": round(sum(p.stat().st_size for p in files) / 1e6, 2),
        "tree_zstd10_mb": packed,
        "tree_and_every_elf_dependency_zstd10_mb": zstd_mb(initrd, "."),  # glibc, libsystemd... included
        "elf_dependencies": sorted(p.name for p in libraries),
    }
    print(json.dumps(report))
    assert packed <= 4, report


def zstd_mb(root: Path, what: str) -> float:
    tar = subprocess.run(["tar", "-C", str(root), "-c", what], capture_output=True, check=True).stdout
    packed = subprocess.run(["zstd", "-10", "-T0", "-c"], input=tar, capture_output=True, check=True).stdout
    return round(len(packed) / 1e6, 2)


def test_the_console_script_alone_cannot_run_in_the_initrd(tmp_path: Path) -> None:
    """The negative control (issue 11, bug 1): the package's bin/rollback is a script; make-initrd-ng
    copies it and not its interpreter or modules, so the unit's command cannot even start."""
    require_root("chroot")
    script = shutil.which("rollback") or str(Path(sys.executable).parent / "rollback")
    store = f"/nix/store/{'1' * 32}-rollback-0.1.0"
    staged = tmp_path / "staged" / store.lstrip("/") / "bin"
    staged.mkdir(parents=True)
    shutil.copy(script, staged / "rollback")
    root = tmp_path / "root"
    make_initrd_ng(tmp_path / "staged", [store], root)
    result = in_chroot(root, f"{store}/bin/rollback", "--help")
    assert result.returncode != 0 and "exit codes" not in result.stdout


@pytest.mark.parametrize("damage", ["a-module-missing", "a-wrapper-as-interpreter"])
def test_the_builds_own_check_fails_a_tree_that_is_not_self_contained(
    initrd: Path, tmp_path: Path, damage: str
) -> None:
    """The negative controls of check_tree, which runs at every build (python_closure.py --tree)."""
    tree = tmp_path / "tree"
    shutil.copytree(initrd.parent / "staged" / PREFIX.lstrip("/"), tree, symlinks=True)
    if damage == "a-module-missing":
        (next(tree.glob("lib/python3*/json/__init__.pyc"))).unlink()
    else:
        (tree / "bin/python3").rename(tree / "bin/python3.real")
        compile_wrapper(tree / "bin/python3", str(tree / "bin/python3.real"))
    with pytest.raises(SystemExit, match="not self-contained"):
        closure_builder().check_tree(str(tree), {})


def test_store_paths_the_tree_names_must_be_in_the_initrd(tmp_path: Path) -> None:
    """Only the tree itself, what a RUNPATH leads to, what is present anyway (--present), and in the
    interpreter's own files its build prefix: anything else would be missing at boot."""
    builder = closure_builder()
    bash, python, other = (
        f"/nix/store/{c * 32}-{n}" for c, n in (("b", "bash-5.3"), ("p", "python3-3.13"), ("o", "x"))
    )
    tree = tmp_path / PREFIX.lstrip("/")
    (tree / "lib/python3.13").mkdir(parents=True)
    (tree / "bin").mkdir()
    (tree / "lib/python3.13/subprocess.pyc").write_bytes(f"\0{bash}/bin/sh\0{PREFIX}/lib".encode())
    (tree / "bin/python3").write_bytes(f"prefix={python}".encode())
    assert builder.foreign_store_paths(str(tmp_path), PREFIX, [bash, python]) == []
    assert builder.foreign_store_paths(str(tmp_path), PREFIX, [python]) == [
        f"{PREFIX}/lib/python3.13/subprocess.pyc: {bash}"
    ]
    (tree / "lib/python3.13/json.pyc").write_bytes(f"{python}/lib {other}/share".encode())
    assert builder.foreign_store_paths(str(tmp_path), PREFIX, [bash, python]) == [
        f"{PREFIX}/lib/python3.13/json.pyc: {other}",
        f"{PREFIX}/lib/python3.13/json.pyc: {python}",
    ]
