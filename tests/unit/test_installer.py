"""scripts/install's decisions, on machines described rather than observed: every unsupported machine
is refused (exit 3) before anything is written, usage errors exit 2, and the plan writes what a boot
needs (pure: packaging/installer.py's plan(), nothing run)."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.environment import unavailable

ROOT = Path(__file__).parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("installer", ROOT / "packaging" / "installer.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["installer"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


installer = _load()
BTRFS_ROOT = {"SOURCE": "/dev/vda2[/root]", "FSTYPE": "btrfs", "UUID": "1234-abcd", "FSROOT": "/root"}
GOOD = installer.Machine(
    euid=0,
    python=(3, 11),
    dracut="/usr/bin/dracut",
    systemd_modules=True,
    root=BTRFS_ROOT,
    root_is_default=False,
    node=None,
    fstype=None,
    installed_prefix=None,
    prefix_exists=False,
    foreign=frozenset(),
    config=None,
)


def plan(machine: object = GOOD, *args: str) -> Any:
    return installer.plan(installer.parse(list(args)), machine)


UNSUPPORTED = {
    "not root": (dataclasses.replace(GOOD, euid=1000), ()),
    "old python": (dataclasses.replace(GOOD, python=(3, 10)), ()),
    "no dracut": (dataclasses.replace(GOOD, dracut=None), ()),
    "no systemd in the initrd": (dataclasses.replace(GOOD, systemd_modules=False), ()),
    "root on ext4": (dataclasses.replace(GOOD, root={**BTRFS_ROOT, "FSTYPE": "ext4"}), ()),
    "root unknown": (dataclasses.replace(GOOD, root=None), ()),
    "root is the top level": (dataclasses.replace(GOOD, root={**BTRFS_ROOT, "FSROOT": "/"}), ()),
    "device missing": (GOOD, ("--device", "/dev/sdz")),
    "device not btrfs": (dataclasses.replace(GOOD, node="/dev/sdb", fstype="ext4"), ("--device", "/dev/sdb")),
    "device blank": (dataclasses.replace(GOOD, node="/dev/sdb", fstype=None), ("--device", "/dev/sdb")),
    "prefix not ours": (dataclasses.replace(GOOD, prefix_exists=True), ()),
    "installed elsewhere": (dataclasses.replace(GOOD, installed_prefix="/srv/rollback"), ()),
    "root is the default subvolume": (dataclasses.replace(GOOD, root_is_default=True), ()),
    "no compiler": (dataclasses.replace(GOOD, missing=("a C compiler (cc)",)), ()),
    "a path not ours": (dataclasses.replace(GOOD, foreign=frozenset({"/usr/local/bin/rollback"})), ()),
    "a module not ours": (
        dataclasses.replace(GOOD, foreign=frozenset({str(installer.MODULE / "module-setup.sh")})),
        (),
    ),
    "kept config, other device": (
        dataclasses.replace(GOOD, config={"device": "/dev/sdb"}, node="/dev/sdb", fstype="btrfs"),
        ("--device", "/dev/sdc", "--unchecked"),
    ),
    "kept config, other cleanup": (
        dataclasses.replace(GOOD, config={"device": "/dev/sdb"}, node="/dev/sdb", fstype="btrfs"),
        ("--cleanup", "after-boot"),
    ),
    "kept config, device not btrfs": (dataclasses.replace(GOOD, config={"device": "/dev/sdb"}, node="/dev/sdb"), ()),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_an_unsupported_machine_is_refused_with_exit_3(case: str) -> None:
    machine, args = UNSUPPORTED[case]
    with pytest.raises(installer.Refused) as refused:
        plan(machine, *args)
    assert refused.value.code == 3 and str(refused.value)


@pytest.mark.parametrize(
    "args",
    [
        ("--device", "sda"),
        ("--device", "UUID="),
        ("--unchecked",),
        ("--policy", "maybe"),
        ("--cleanup", "never"),
        ("--prefix", "venv"),
        ("--prefix", "/opt"),
        ("--prefix", "/"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as error:
        installer.parse(list(args))
    assert error.value.code == 2


def test_the_running_root_is_named_by_its_filesystem_uuid_and_checked_by_node() -> None:
    out = plan()
    config = dict((str(p), text) for p, text, _ in out.files)["/etc/rollback.toml"]
    assert 'device = "UUID=1234-abcd"' in config and 'subvolume = "root"' in config
    assert out.checks[-1][-3:] == ["status", "--device", "/dev/vda2"]
    assert installer.CONFIG not in out.keep


def test_a_config_file_that_is_not_ours_is_kept_and_decides() -> None:
    mine = {"device": "LABEL=my root", "subvolume": "@", "cleanup": "after-boot"}
    out = plan(dataclasses.replace(GOOD, config=mine, node="/dev/sdb", fstype="btrfs"))
    assert out.keep == {installer.CONFIG} and installer.CONFIG not in out.paths()
    assert out.checks[-1][-3:] == ["status", "--device", "/dev/sdb"]
    assert any(p.name == "rollback-cleanup@dev-disk-by\\x2dlabel-my\\x5cx20root.service" for p, _ in out.links)


@pytest.mark.parametrize("spelling", ["@", "./@", "@/.", "/@/"])
def test_a_subvolume_option_is_compared_with_a_kept_config_as_the_boot_reads_both(spelling: str) -> None:
    """`--subvolume ./@` with a kept `subvolume = "@"` was refused as a contradiction (a reviewer)."""
    mine = {"device": "LABEL=my root", "subvolume": "@"}
    out = plan(dataclasses.replace(GOOD, config=mine, node="/dev/sdb", fstype="btrfs"), "--subvolume", spelling)
    assert out.keep == {installer.CONFIG}
    with pytest.raises(installer.Refused, match=r"has subvolume '@', not '\./other'"):
        plan(dataclasses.replace(GOOD, config=mine, node="/dev/sdb", fstype="btrfs"), "--subvolume", "./other")


KEPT_INVALID: dict[str, dict[str, object]] = {
    "mode 'bogus' is not one of recreate, snapshot": {"mode": "bogus"},  # installed: not "recreate"
    "subvolume '/root' is absolute": {"subvolume": "/root"},
    "keep-days is set but archive is not": {"keep_days": 3},
    "cleanup 'never' is not one of boot, after-boot": {"cleanup": "never"},
    "device 'sda' is neither a device path": {"device": "sda"},
}


@pytest.mark.parametrize("reason", KEPT_INVALID)
def test_a_kept_config_every_boot_would_refuse_is_refused_with_the_clis_reason(reason: str) -> None:
    """Exit 2 before any write, as `rollback config` would exit at every boot (was: mode 'bogus' taken
    for not-recreate and installed, then the check after installing failed: exit 1, all written)."""
    config = {"device": "UUID=1234-abcd", **KEPT_INVALID[reason]}
    with pytest.raises(installer.Refused) as refused:
        plan(dataclasses.replace(STOCK, config=config, **ROOT_BY_NODE))
    assert refused.value.code == 2 and "every boot would refuse it" in str(refused.value)
    assert reason in str(refused.value)


def test_a_kept_config_that_cannot_be_read_is_refused_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "rollback.toml"
    config.write_text('device = "/dev/vda"\nmodes = "snapshot"\n')
    monkeypatch.setattr(installer, "CONFIG", config)
    with pytest.raises(installer.Refused) as refused:
        plan(dataclasses.replace(GOOD, config=installer._read_config(), node="/dev/vda", fstype="btrfs"))
    assert refused.value.code == 2 and "unknown key 'modes'" in str(refused.value)


def test_a_subvolume_the_config_would_name_wrongly_is_refused_before_writing() -> None:
    with pytest.raises(installer.Refused) as refused:
        plan(GOOD, "--subvolume", "a/../b")
    assert refused.value.code == 2 and "every boot would refuse it" in str(refused.value)
    written = dict((str(p), t) for p, t, _ in plan(GOOD, "--subvolume", "/@root/").files)
    assert 'subvolume = "@root"' in written["/etc/rollback.toml"]


def test_names_are_written_escaped() -> None:
    out = plan(dataclasses.replace(GOOD, node="/dev/sdb", fstype="btrfs"), "--device", 'LABEL=a\\b"c')
    config = dict((str(p), text) for p, text, _ in out.files)["/etc/rollback.toml"]
    assert tomllib.loads(config)["device"] == 'LABEL=a\\b"c'


def test_dry_run_needs_no_root() -> None:
    assert plan(dataclasses.replace(GOOD, euid=1000), "--dry-run").files


def test_a_device_for_another_machine_is_written_unchecked() -> None:
    out = plan(GOOD, "--device", "/dev/vda", "--unchecked", "--subvolume", "@")
    config = dict((str(p), text) for p, text, _ in out.files)["/etc/rollback.toml"]
    assert 'device = "/dev/vda"' in config and 'subvolume = "@"' in config
    assert [c for c in out.checks if "status" in c] == []


def test_the_boot_gets_the_module_its_units_and_the_policy() -> None:
    out = plan(GOOD, "--policy", "stop-boot")
    files = {str(p): (text, mode) for p, text, mode in out.files}
    module = "/usr/lib/dracut/modules.d/90rollback/"
    for name in ("module-setup.sh", "python_closure.py", "units/rollback@.service", "units/rollback-early@.service"):
        assert module + name in files
    assert files[module + "units/rollback-trigger"][1] == 0o755
    assert "rollback_policy=stop-boot\n" in files["/etc/dracut.conf.d/90-rollback.conf"][0]
    assert "/usr/bin/rollback" not in files["/usr/local/lib/systemd/system/rollback-cleanup@.service"][0]


def test_deletion_after_boot_enables_the_cleanup_unit() -> None:
    boot, after = plan(), plan(GOOD, "--cleanup", "after-boot")
    assert [p for p, _ in boot.links] == [installer.BIN]
    (wants,) = [p for p, _ in after.links if p != installer.BIN]
    assert wants.parent == installer.WANTS and wants.name.startswith("rollback-cleanup@")
    assert 'cleanup = "after-boot"' in dict((str(p), t) for p, t, _ in after.files)["/etc/rollback.toml"]


ESCAPE_CASES = [
    "/dev/vda",
    "/dev/disk/by-uuid/1234-abcd",
    "/dev/disk/by-label/my\\x20root",
    "/dev/mapper/crypt-root",
    "//dev//./sda1/",
    "/.hidden/x",
    "/dev/disk/by-label/café",
    "/dev/disk/by-partlabel/a:b_c.d",
    "/",
]


@pytest.mark.parametrize("path", ESCAPE_CASES)
def test_unit_names_are_escaped_as_systemd_escape_does(path: str) -> None:
    from rollback.devspec import unit_path_escape

    if not shutil.which("systemd-escape"):
        unavailable("systemd-escape is not installed (scripts/setup installs systemd)")
    expected = subprocess.run(["systemd-escape", "--path", path], capture_output=True, text=True, check=True)
    assert unit_path_escape(path) == expected.stdout.strip()


def test_docs_list_every_path_the_installer_writes() -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    section = design[design.index("## What scripts/install writes") :]
    out = plan(GOOD, "--cleanup", "after-boot")
    for path in [*out.paths(), installer.MANIFEST]:
        shown = str(path) if not path.name.startswith("rollback-cleanup@") else str(path.parent)
        assert f"`{shown}" in section, path


@pytest.mark.parametrize(
    "prefix", ["/var/lib/rollback", "/var/lib", "/usr/local/bin", "/etc", "/usr/local/bin/rollback"]
)
def test_a_prefix_that_overlaps_what_the_installer_writes_is_a_usage_error(prefix: str) -> None:
    with pytest.raises(SystemExit) as error:
        installer.parse(["--prefix", prefix])
    assert error.value.code == 2


def test_while_an_install_runs_the_manifest_knows_the_old_and_the_new() -> None:
    """Interrupted anywhere, a re-run or --uninstall must still own every path of both installs."""
    old = [
        {"path": "/x", "kind": "dir"},
        {"path": "/opt/rollback", "kind": "tree"},
        {"path": "/etc/rollback.toml", "kind": "file", "sha256": "a"},
        {"path": "/etc/systemd/system/multi-user.target.wants/u.service", "kind": "link", "target": "/t"},
    ]
    new = [
        {"path": "/opt/rollback", "kind": "tree"},
        {"path": "/etc/rollback.toml", "kind": "file", "sha256": "b"},
        {"path": "/y", "kind": "dir"},
    ]
    merged = {entry["path"]: entry for entry in installer.merged(old, new)}
    assert merged["/etc/rollback.toml"]["sha256"] == ["a", "b"]
    assert set(merged) == {entry["path"] for entry in old + new}
    kinds = [entry["kind"] for entry in installer.merged(old, new)]
    assert kinds[:3] == ["dir", "dir", "tree"]  # removed last, in reverse: files and links go first


@pytest.mark.parametrize(
    "content",
    [b'device = "/dev/vda"\nmode = "\xff"\n', b"device = [", b"\xef\xbb\xbf\x00", b"x = " + b"[" * 3000 + b"]" * 3000],
)
def test_a_config_file_that_does_not_read_is_an_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    """tomllib raises UnicodeDecodeError (not TOMLDecodeError) for bytes that are not UTF-8."""
    config = tmp_path / "rollback.toml"
    config.write_bytes(content)
    monkeypatch.setattr(installer, "CONFIG", config)
    assert "__error__" in installer._read_config()


def lying_in(subvolume: str, *paths: str) -> dict[str, tuple[str, ...]]:
    """Machine.places: each path in `subvolume` (its path from the top level)."""
    return {path: (f"{subvolume}{path}",) for path in paths}


WRITTEN = installer.written("/opt/rollback")
# A stock Fedora or Debian btrfs install: / is the subvolume `root` and /usr is in it.
STOCK = dataclasses.replace(GOOD, places=lying_in("root", "/usr", *WRITTEN))
ROOT_BY_NODE = {"node": "/dev/vda2", "fstype": "btrfs", "device_uuid": "1234-abcd"}
HOLDS_THE_OS = {
    "the running root (no --device)": (STOCK, ()),
    "--device: the root's node": (dataclasses.replace(STOCK, **ROOT_BY_NODE), ("--device", "/dev/vda2")),
    "--device: the root's UUID, unchecked": (STOCK, ("--device", "UUID=1234-abcd", "--unchecked")),
    "--subvolume: the root's, with slashes": (STOCK, ("--subvolume", "/root/")),
    "--subvolume: the root's, as ./root": (STOCK, ("--subvolume", "./root")),
    "--subvolume: the root's, as root/.": (STOCK, ("--subvolume", "root/.")),
    "a kept config without mode": (
        dataclasses.replace(STOCK, config={"device": "UUID=1234-abcd", "subvolume": "root"}, **ROOT_BY_NODE),
        (),
    ),
    "a kept config spelling the subvolume ./root/": (
        dataclasses.replace(STOCK, config={"device": "UUID=1234-abcd", "subvolume": "./root/"}, **ROOT_BY_NODE),
        (),
    ),
    "a kept config, mode recreate, by node": (
        dataclasses.replace(STOCK, config={"device": "/dev/vda2", "mode": "recreate"}, **ROOT_BY_NODE),
        (),
    ),
}


@pytest.mark.parametrize("case", HOLDS_THE_OS)
def test_recreating_the_subvolume_that_holds_the_running_os_is_refused(case: str) -> None:
    """Without a mode the config means recreate: a new EMPTY root at every boot. On a stock install the
    first boot would delete /usr and /etc (no archive) and not come up."""
    machine, args = HOLDS_THE_OS[case]
    with pytest.raises(installer.Refused) as refused:
        plan(machine, *args)
    message = str(refused.value)
    assert refused.value.code == 3
    assert "holds the operating system" in message and "EMPTY" in message
    assert 'mode = "snapshot"' in message and "blank" in message and "undone at every boot" in message


@pytest.mark.parametrize("spelling", ["LABEL=my root", "/dev/disk/by-label/my\\x20root", "node"])
def test_a_device_for_another_machine_that_is_the_running_roots_filesystem_here_is_refused(
    spelling: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--unchecked skips the checks a device for another machine cannot pass, not the refusal: however
    it is spelled (was: only UUID= recognised), a device naming the running root's filesystem here
    is looked up (blkid, no udev links needed) and the OS in its subvolume refused."""
    node = str(tmp_path / "sdb")  # the node, as /dev/sdb would be
    Path(node).touch()
    spelling = node if spelling == "node" else spelling

    def blkid(argv: list[str]) -> str | None:
        answers = {"LABEL=my root": node, "TYPE": "btrfs", "UUID": "1234-abcd"}
        asked = argv[-1] if argv[-1] != node else argv[-2]
        return answers[asked] + "\n" if argv[0] == "blkid" and asked in answers else None

    monkeypatch.setattr(installer, "_run", blkid)
    assert installer.identify(spelling, True) == (None, "btrfs", "1234-abcd")
    assert installer.identify(spelling, False) == (node, "btrfs", "1234-abcd")
    machine = dataclasses.replace(STOCK, device_uuid="1234-abcd")
    with pytest.raises(installer.Refused, match="holds the operating system"):
        plan(machine, "--device", spelling, "--unchecked")


OTHER_SUBVOLUME = {
    "another filesystem's subvolume of the same name": (
        dataclasses.replace(STOCK, node="/dev/sdb", fstype="btrfs", device_uuid="5678-ef01"),
        ("--device", "/dev/sdb"),
    ),
    "another subvolume of the root's filesystem": (STOCK, ("--subvolume", "scratch")),
    "a device for another machine": (STOCK, ("--device", "/dev/vda", "--unchecked")),
    "a kept config naming another filesystem": (
        dataclasses.replace(STOCK, config={"device": "/dev/sdb"}, node="/dev/sdb", fstype="btrfs", device_uuid="5678"),
        (),
    ),
}


@pytest.mark.parametrize("case", OTHER_SUBVOLUME)
def test_only_the_running_roots_own_filesystem_and_subvolume_is_the_running_os(case: str) -> None:
    machine, args = OTHER_SUBVOLUME[case]
    out = plan(machine, *args)
    assert out.files and out.warnings == []


def test_snapshot_mode_on_the_running_os_is_installed_with_warnings() -> None:
    """The blank holds the OS; the installer's files survive only if the blank is made after installing."""
    config = {"device": "UUID=1234-abcd", "subvolume": "root", "mode": "snapshot"}
    machine = dataclasses.replace(STOCK, config=config, **ROOT_BY_NODE)
    out = plan(machine)
    lost, os_changes = out.warnings
    assert "Make the blank AFTER installing" in lost and "leaves rollback out" in lost
    assert "/etc/dracut.conf.d/90-rollback.conf" in lost and "/opt/rollback" in lost
    assert "undone at every boot" in os_changes


def test_recreate_mode_refuses_when_the_installers_own_files_would_vanish() -> None:
    """/usr on its own subvolume, but /etc in the replaced root: 90-rollback.conf vanishes at the first
    boot and the next kernel update builds an initramfs without rollback, silently."""
    machine = dataclasses.replace(
        GOOD, places={**lying_in("usr", "/usr"), **lying_in("root", "/etc/dracut.conf.d/90-rollback.conf")}
    )
    with pytest.raises(installer.Refused) as refused:
        plan(machine)
    assert refused.value.code == 3 and "/etc/dracut.conf.d/90-rollback.conf" in str(refused.value)
    assert "leave rollback out" in str(refused.value)
    persisted = dataclasses.replace(machine, places=lying_in("persist", "/etc/dracut.conf.d/90-rollback.conf"))
    assert plan(persisted).warnings == []


def test_where_each_written_path_lies_is_observed() -> None:
    """Every path the plan writes (and the prefix and the manifest) is one observe() looks at, or in one."""
    out = plan(GOOD, "--cleanup", "after-boot")
    places = set(installer.written("/opt/rollback"))
    for path in [*out.paths(), Path("/opt/rollback"), installer.MANIFEST]:
        assert str(path) in places or str(path.parent) in places, path


def mountinfo_at(where: Path) -> Any:
    """/ is the subvolume `root` of the filesystem 0:43; below `where`: home its subvolume `home`, boot
    an ext4, srv/etc a bind mount of the directory persist/etc of the subvolume `persist`."""
    return installer.mountinfo.parse(
        "29 1 0:43 /root / rw,relatime shared:1 - btrfs /dev/vda2 rw,subvolid=256,subvol=/root\n"
        f"30 29 0:43 /home {where}/home rw - btrfs /dev/vda2 rw,subvolid=257,subvol=/home\n"
        f"31 29 8:1 / {where}/boot rw - ext4 /dev/vda1 rw\n"
        f"32 29 0:43 /persist/etc {where}/srv/etc rw - btrfs /dev/vda2 rw,subvolid=258,subvol=/persist\n"
    )


def test_a_path_lies_below_its_mounts_subvolume_whatever_its_st_dev(tmp_path: Path) -> None:
    """A subvolume nested in the root is no mount: its files lie below the root's path, and go with it
    at every boot (its own st_dev, unlike the root's, once made /usr count as surviving). Another
    subvolume mounted, a bind mount of a directory in one, another filesystem: their own places."""
    where = tmp_path.resolve()
    (where / "usr").mkdir()  # e.g. btrfs subvolume create /usr: not in mountinfo
    paths = [f"{where}/usr/bin", f"{where}/home/a/b", f"{where}/boot/c", f"{where}/srv/etc/d", "/"]
    assert installer.places(paths, mountinfo_at(where)) == {
        f"{where}/usr/bin": (f"root{where}/usr/bin",),
        f"{where}/home/a/b": ("home/a/b",),
        f"{where}/boot/c": (),
        f"{where}/srv/etc/d": ("persist/etc/d",),
        "/": ("root",),
    }


def test_a_symbolic_link_lies_where_it_is_and_takes_what_it_leads_to(tmp_path: Path) -> None:
    """/usr, /opt or /etc/rollback.toml a link into a surviving subvolume, the link itself in the root:
    at the first boot the link is gone and what it led to with it (os.stat followed it: 'survives').
    Every link on the way counts, relative, absolute or chained; a loop ends."""
    where = tmp_path.resolve()
    (where / "srv" / "etc").mkdir(parents=True)  # the bind mount of persist/etc
    (where / "etc").symlink_to(where / "srv" / "etc")  # absolute, into persist
    (where / "opt").symlink_to("x/../srv/./etc")  # relative, through a name not made
    (where / "srv" / "etc" / "back").symlink_to("../../usr")  # from persist into the root
    (where / "loop").symlink_to("loop")
    paths = [f"{where}/etc/rollback.toml", f"{where}/opt/rollback", f"{where}/srv/etc/back/bin", f"{where}/loop/x"]
    assert installer.places(paths, mountinfo_at(where)) == {
        f"{where}/etc/rollback.toml": (f"root{where}/etc", "persist/etc/rollback.toml"),
        f"{where}/opt/rollback": (f"root{where}/opt", "persist/etc/rollback"),
        f"{where}/srv/etc/back/bin": ("persist/etc/back", f"root{where}/usr/bin"),
        f"{where}/loop/x": (f"root{where}/loop", f"root{where}/loop/x"),
    }
    linked = {"/usr": ("root/usr", "usr"), "/opt/rollback": ("root/opt", "opt/rollback")}
    with pytest.raises(installer.Refused, match="holds the operating system"):
        plan(dataclasses.replace(GOOD, places=linked))
    with pytest.raises(installer.Refused, match="/opt/rollback"):
        plan(dataclasses.replace(GOOD, places={**linked, "/usr": ("usr",)}))


NESTED = {
    "/usr a subvolume nested in the root": ("root", lying_in("root", "/usr")),
    "the root nested in the replaced subvolume": ("@", lying_in("@/root", "/usr")),
}


@pytest.mark.parametrize("case", NESTED)
def test_recreating_a_subvolume_the_os_is_nested_in_is_refused(case: str) -> None:
    subvolume, where = NESTED[case]
    machine = dataclasses.replace(GOOD, places=where)
    with pytest.raises(installer.Refused) as refused:
        plan(machine, "--subvolume", subvolume)
    assert refused.value.code == 3 and "holds the operating system" in str(refused.value)
    assert plan(dataclasses.replace(machine, places=lying_in("usr", "/usr")), "--subvolume", subvolume)
