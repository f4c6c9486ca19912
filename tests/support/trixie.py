"""The second VM platform: a Debian 13 (trixie) userland made with debootstrap from Debian's registry,
rollback installed into it with scripts/install, its initramfs built by trixie's own dracut, systemd
and Python, and its own kernel booted under qemu.

The userland (debootstrap + the distribution packages) is cached as a tarball keyed by what goes into
it (ROLLBACK_VM_CACHE, default /var/cache/rollback-tests); the install and the initramfs builds run
every session, from the working tree.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.support.layout import sh
from tests.support.vm import BASE_MODULES, REPO, Kernel, Variant, dracut_argv, present

CACHE = Path(os.environ.get("ROLLBACK_VM_CACHE", "/var/cache/rollback-tests"))
MIRROR = "http://deb.debian.org/debian"
# what scripts/install needs (the README's apt line), a kernel, and what the scenarios' initramfs holds
PACKAGES = [
    *("python3", "python3-venv", "python3-dev", "gcc", "pkg-config", "libbtrfsutil-dev", "libsystemd-dev"),
    *("btrfs-progs", "dracut", "linux-image-cloud-amd64", "systemd", "systemd-sysv", "systemd-cryptsetup"),
    *("cryptsetup-bin", "zstd", "ca-certificates"),
]
CLEAN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def _key() -> str:
    return hashlib.sha256(f"trixie {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]


def userland(root: Path) -> None:
    """debootstrap trixie with PACKAGES into `root`, from the cache when it holds this package set."""
    tarball = CACHE / f"trixie-{_key()}.tar"
    root.mkdir(parents=True)
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        build = root.parent / "trixie-build"
        sh("debootstrap", "--variant=minbase", "trixie", str(build), MIRROR)
        _chroot(build, "apt-get", "update", "-qq")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        _chroot(build, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES, env=env)
        _chroot(build, "apt-get", "clean")
        sh("tar", "-C", str(build), "-cf", f"{tarball}.part", ".")
        os.replace(f"{tarball}.part", tarball)
        shutil.rmtree(build)
    sh("tar", "-C", str(root), "-xf", str(tarball))


def install(root: Path) -> str:
    """The working tree copied in, then `scripts/install` inside, as on a trixie machine; its output."""
    source = root / "src" / "rollback"
    shutil.rmtree(source, ignore_errors=True)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name, follow_symlinks=False)
    # pip verifies the registry with the host's CA bundle (the chroot's own does not verify it here)
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/ca-certificates.crt")
    env = {"PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"}
    return _chroot(root, "/src/rollback/scripts/install", "--device", "/dev/vda", "--unchecked", env=env)


def versions(root: Path) -> dict[str, object]:
    """What the platform runs, for the closing note and docs/development.md."""
    wanted = (
        "systemd",
        "dracut",
        "dracut-core",
        "python3",
        "btrfs-progs",
        "libbtrfsutil1t64",
        "linux-image-cloud-amd64",
    )
    shown = _chroot(root, "dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *wanted, check=False)
    found: dict[str, object] = {}
    for line in shown.splitlines():
        package, _, version = line.partition(" ")
        if version:
            found[package] = version
    pip = _chroot(root, "/opt/rollback/bin/python3", "-m", "pip", "list", "--format=freeze", check=False)
    found["pip"] = [line for line in pip.splitlines() if "==" in line]
    return found


def find_kernel(root: Path) -> Kernel:
    (vmlinuz,) = glob.glob(str(root / "boot" / "vmlinuz-*-cloud-amd64"))
    return Kernel(Path(vmlinuz).name.removeprefix("vmlinuz-"), Path(vmlinuz))


INSTALLED = Variant("boot-on")  # what install() asked for: /dev/vda, boot-on, no other setting


def build_initramfs(root: Path, kernel: Kernel, variant: Variant, work: Path) -> Path:
    """trixie's dracut, inside the userland, with the installed module and interpreter. The variant
    the install made is built as `dracut --force` would be, from the configuration it wrote
    (/etc/dracut.conf.d, /etc/rollback.toml); any other passes its device, policy and settings as
    the dracut module's documented variables, with no configuration file."""
    for module in ("tests/vm/guest/99rollback-test", "bench/dracut/90rollback-seed"):  # test and benchmark only
        where = root / "usr/lib/dracut/modules.d" / Path(module).name
        if not where.exists():
            shutil.copytree(REPO / module, where)
    inside = Path("/tmp") / f"build-{variant.name}"
    (root / inside.relative_to("/")).mkdir(parents=True, exist_ok=True)
    (root / inside.relative_to("/") / "rollback.toml").write_text(f'device = "{variant.device}"\n{variant.config}')
    (root / inside.relative_to("/") / "conf.d").mkdir(exist_ok=True)
    for source, dest in variant.includes:  # e.g. the LUKS key file
        shutil.copy(source, root / inside.relative_to("/") / Path(dest).name)
    installed = variant == INSTALLED
    env = {
        "rollback_python": "/opt/rollback/bin/python3",
        "rollback_config": f"{inside}/rollback.toml",
        "rollback_policy": variant.policy,
    }
    modules = (*BASE_MODULES, *(() if installed else variant.modules))  # installed: its conf adds rollback
    confdir = "/etc/dracut.conf.d" if installed else f"{inside}/conf.d"
    includes = tuple((f"{inside}/{Path(dest).name}", dest) for _, dest in variant.includes)
    argv = dracut_argv(kernel, f"{inside}/initramfs.img", present(modules, root / "usr/lib/dracut"), confdir, includes)
    _chroot(root, *argv, env={} if installed else env)
    out = work / f"initramfs-trixie-{variant.name}.img"
    shutil.move(root / inside.relative_to("/") / "initramfs.img", out)
    return out


# /proc, /sys and /dev for the chroot (dracut and pip need them), mounted in a mount namespace of the
# command's own with private propagation: they vanish with it, and nothing reaches the host's mounts
# (an rbind torn down with a lazy recursive unmount can take the host's /dev/pts with it)
_IN_NAMESPACE = " && ".join(
    (
        'mount -t proc proc "$0/proc"',
        'mount --rbind /sys "$0/sys"',
        'mount --rbind /dev "$0/dev"',
        'exec chroot "$0" "$@"',
    )
)


def _chroot(root: Path, *argv: str, env: dict[str, str] | None = None, check: bool = True) -> str:
    clean = ["env", "-i", *(f"{k}={v}" for k, v in {**CLEAN_ENV, **(env or {})}.items())]
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _IN_NAMESPACE, str(root), *clean]
    result = subprocess.run([*command, *argv], capture_output=True, text=True)
    if result.returncode != 0 and check:
        raise RuntimeError(
            f"in the trixie chroot, {' '.join(argv)} exited {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result.stdout + result.stderr
