"""The NixOS module and package, checked offline with nixpkgs' own module system.

tests/nix/check.nix evaluates machines with nixpkgs' real lib (lib.evalModules), upstream's NixOS
declarations of what the module touches (../shared/nix/upstream: the systemd initrd and its
generateUnits, fileSystems, assertions, utils) and a stand-in pkgs (tests/nix/stand-in-pkgs.nix: real
derivations, never built), in one `nix-instantiate --eval` for all machines. It reports what each
machine's initrd would get: what make-initrd-ng is given, the units, /etc/rollback.toml and the failed
assertions. On top of that:
- generateUnits' script runs against a stand-in store to lay out the initrd's /etc/systemd/system,
  and systemd loads the instance from the result (`systemd-analyze verify`);
- the package's check phase is replayed on exactly the files its lib.fileset ships;
- the device mapping is compared with rollback/devspec.py and with `systemd-escape --path`.
Where ../shared/nix, nix-instantiate or a tool is missing: unavailable() (skip locally, fail in CI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rollback.devspec import device_path
from rollback.names import canonical as canonical_name
from rollback.settings import SETTINGS, schema
from tests.support.cli import rollback_argv
from tests.support.environment import unavailable

pytestmark = pytest.mark.static

ROOT = Path(__file__).parents[2]
KIT_ENV = "ROLLBACK_NIX_KIT"


def find_kit() -> Path:
    """The evaluation kit (nixpkgs' lib, upstream declarations): $ROLLBACK_NIX_KIT, else ../shared/nix
    beside this checkout, else beside the checkout it was cloned from (CI runs on a fresh clone)."""
    if os.environ.get(KIT_ENV):
        return Path(os.environ[KIT_ENV])
    origin = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"], capture_output=True, text=True)
    places = [ROOT.parent]
    if origin.returncode == 0 and origin.stdout.strip().startswith("/"):
        places.append(Path(origin.stdout.strip()).parent)
    found = [place / "shared" / "nix" for place in places if (place / "shared" / "nix").is_dir()]
    return found[0] if found else ROOT.parent / "shared" / "nix"


KIT = find_kit()
CHECK = ROOT / "tests/nix/check.nix"
NIX_FILES = sorted(p for p in ROOT.rglob("*.nix") if ".venv" not in p.parts)
MODULE_ONLY = {"enable", "package", "initrdPackage", "failurePolicy", "kernelCommandLine"}
DEVICE = "/dev/vda2"
INSTANCE = "rollback@dev-vda2.service"
EARLY = "rollback-early@dev-vda2.service"

Machine = dict[str, Any]


def btrfs(subvol: str, **more: Any) -> dict[str, Any]:
    return {"device": DEVICE, "fsType": "btrfs", "options": [f"subvol={subvol}"], **more}


def machine(rollback: dict[str, Any] | None = None, fs: dict[str, Any] | None = None, **more: Any) -> Machine:
    """A NixOS module as JSON: systemd stage 1, the root from subvol=root, /persist mounted in stage 1,
    /nix; `fs` adds, replaces or (None) removes fileSystems entries; `more` is merged in."""
    filesystems = {"/": btrfs("root"), "/persist": btrfs("persist", neededForBoot=True), "/nix": btrfs("nix")}
    filesystems.update(fs or {})
    found: Machine = {
        "boot": {"initrd": {"systemd": {"enable": True}}, "rollback": {"enable": True, **(rollback or {})}},
        "fileSystems": {name: value for name, value in filesystems.items() if value is not None},
    }
    return merged(found, more)


def merged(base: Machine, more: Machine) -> Machine:
    out = dict(base)
    for key, value in more.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# The failing machines: each fault, and every message it must produce (and no other).
FAILS: dict[str, tuple[Machine, list[str]]] = {
    "no-systemd-initrd": (
        machine(boot={"initrd": {"systemd": {"enable": False}}}),
        ["set boot.initrd.systemd.enable = true"],
    ),
    "ext4-root": (
        machine(fs={"/": {"device": DEVICE, "fsType": "ext4", "options": ["subvol=root"]}}),
        ['fileSystems."/".fsType must be "btrfs"'],
    ),
    "no-root": (
        machine(fs={"/": None}),
        [
            'no fileSystems entry has mountPoint = "/"',
            'add "subvol=root" to fileSystems."/".options',
            'set boot.rollback.device (fileSystems."/" has no device)',
            "does not specify your root file system",  # upstream initrd.nix's own
        ],
    ),
    "wrong-subvol": (machine(fs={"/": btrfs("@")}), ['add "subvol=root" to fileSystems."/".options']),
    "root-subvolid": (
        machine(fs={"/": btrfs("root", options=["subvol=root", "compress=zstd,subvolid=256"])}),
        ['remove subvolid= from fileSystems."/".options: every boot replaces `root` with a new subvolume'],
    ),
    "root-without-device": (
        machine(fs={"/": {"fsType": "btrfs", "options": ["subvol=root"]}}),
        ['set boot.rollback.device (fileSystems."/" has no device)'],
    ),
    "device-not-a-path": (
        machine({"device": "nixos"}),
        ['boot.rollback.device = "nixos" is neither a device path nor a tag: write /dev/disk/by-label/<label>'],
    ),
    "root-device-not-a-path": (
        machine(fs={"/": btrfs("root", device="nixos")}),
        ['fileSystems."/".device = "nixos" is neither a device path nor a tag'],
    ),
    "empty-tag": (machine({"device": "uuid="}), ['boot.rollback.device = "uuid=" names no UUID: write UUID=<value>']),
    "not-normalized": (
        machine({"device": "/dev/disk/../vda2"}),
        ['boot.rollback.device = "/dev/disk/../vda2" is not a normalized path'],
    ),
    "persist-not-needed": (
        machine(fs={"/persist": btrfs("persist")}),
        ['set neededForBoot = true on fileSystems."/persist".'],
    ),
    "persist-by-name-not-needed": (
        machine(fs={"/persist": None, "keep": btrfs("persist", mountPoint="/persist")}),
        ["set neededForBoot = true on fileSystems.keep."],
    ),
    "target-protected": (
        machine({"subvolume": "persist"}, fs={"/": btrfs("persist"), "/persist": None}),
        ["the target subvolume `persist` is in boot.rollback.protect"],
    ),
    "retention-without-archive": (
        machine({"keepDays": 7, "keepCount": 3}),
        ["keepDays, keepCount only apply when old roots are kept: set boot.rollback.archive"],
    ),
    "keep-min-without-archive": (
        machine({"keepMin": 5}),
        ["keepMin only apply when old roots are kept: set boot.rollback.archive"],
    ),
    "subvolume-absolute": (
        machine({"subvolume": "/rootfs"}),
        ['subvolume = "/rootfs" is absolute (names are relative to the btrfs top level). Names are relative'],
    ),
    "protect-bad-names": (
        machine({"protect": ["/persist", "", "../x"]}),
        [
            'protect = "/persist" is absolute (names are relative to the btrfs top level); protect = "" names '
            "nothing below the top level; protect = \"../x\" has a '..' component (must stay below the top level)."
        ],
    ),
    "archive-not-a-name": (
        machine({"archive": "old roots"}),
        ['archive = "old roots" may only use ASCII letters, digits and _ @ + . - (separated by /).'],
    ),
    "archive-in-state-dir": (
        machine({"archive": ".rollback/x"}),
        ['archive = ".rollback/x" is inside rollback\'s own state directory .rollback: choose a name outside it.'],
    ),
    "archive-inside-root": (
        machine({"archive": "root/old"}),
        ['archive "root/old" and subvolume "root" overlap: choose them so that neither lies inside the other'],
    ),
    "blank-inside-root": (
        machine({"mode": "snapshot", "blank": "root/blank"}),
        ['blank "root/blank" and subvolume "root" overlap: choose them so that neither lies inside the other'],
    ),
    "root-by-name-ext4": (
        machine(
            fs={"/": None, "root": {"mountPoint": "/", "device": DEVICE, "fsType": "ext4", "options": ["subvol=root"]}}
        ),
        ['fileSystems.root.fsType must be "btrfs"'],
    ),
}

# Devices as users write them (boot.rollback.device), mapped by the module and by devspec.
DEVICE_VALUES = [
    "/dev/vda2",
    "/dev/disk/by-id/nvme-Samsung_SSD_980-part2",
    "UUID=0f5c8a4e-2d6b-4f1e-9a55-3c1d2b7e8f90",
    "PARTUUID=6a1f-03",
    "LABEL=nixos",
    "LABEL=my root",
    "LABEL=a/b",
    "label=lower case tag",
    "PARTLABEL=EFI\\system",
    "LABEL=tab\there",
    "LABEL=.dot",
    "LABEL=#+-.:=@_",
    "LABEL=naïve",
    "LABEL=日本語",
    "LABEL=😀",
    "LABEL=a\u00a0b",  # U+00A0: not printable for Python, kept by udev (encode_devnode_name)
]
DEVICES = DEVICE_VALUES  # each maps as rollback/devspec.py maps it, and as udev names it

MACHINES: dict[str, Machine] = {
    "impermanence": {"_imports": ["machines/impermanence.nix"]},
    "boot-on": machine(),
    "stop-boot": machine({"failurePolicy": "stop-boot"}, boot={"initrd": {"systemd": {"emergencyAccess": "$6$x"}}}),
    "no-cmdline": machine({"kernelCommandLine": False}),
    "stop-boot-no-cmdline": machine(
        {"failurePolicy": "stop-boot", "kernelCommandLine": False},
        boot={"initrd": {"systemd": {"emergencyAccess": True}}},
    ),
    # emergencyAccess at its NixOS default (false): emergency mode has no way in
    "stop-boot-locked": machine({"failurePolicy": "stop-boot"}),
    "stop-boot-locked-no-cmdline": machine({"failurePolicy": "stop-boot", "kernelCommandLine": False}),
    "cleanup-after-boot": machine({"cleanup": "after-boot"}),
    "cleanup-after-boot-no-cmdline": machine({"cleanup": "after-boot", "kernelCommandLine": False}),
    "archive": machine(
        {
            "archive": "old_roots",
            "keepDays": 14,
            "keepCount": 10,
            "keepMin": 2,
            "protect": ["persist", "nix", "srv"],
            "mode": "snapshot",
            "ignoreHibernation": True,
        }
    ),
    "root-by-name": machine(
        fs={
            "/": None,
            "/persist": None,
            "root": btrfs("root", mountPoint="/"),
            "persist": btrfs("persist", mountPoint="/persist", neededForBoot=True),
        }
    ),
    "root-entry-disabled": machine(
        fs={"/": {"enable": False, "device": "/dev/sda1", "fsType": "ext4"}, "root": btrfs("root", mountPoint="/")}
    ),
    # /home from subvol=home on another disk, mounted after stage 1: not what rollback protects
    "home-on-another-disk": machine(fs={"/home": {**btrfs("home"), "device": "/dev/vdb1"}}),
    "root-by-label": machine(fs={"/": {"label": "my root", "fsType": "btrfs", "options": ["subvol=root"]}}),
    "disabled": machine({"enable": False}),
    "without-module": {
        "_withoutModule": True,
        **{k: v for k, v in machine().items() if k != "boot"},
        "boot": {"initrd": {"systemd": {"enable": True}}},
    },
    # The way not to: a services entry for the instance without asDropin replaces the template.
    "naive-instance": machine(
        boot={"initrd": {"systemd": {"services": {"rollback@dev-vda2": {"serviceConfig": {"Environment": "A=1"}}}}}}
    ),
    # The way the module did it before: a drop-in through contents, below the generated unit directory.
    "contents-below-units": machine(
        boot={"initrd": {"systemd": {"contents": {"/etc/systemd/system/sysroot.mount.d/x.conf": {"text": "x"}}}}}
    ),
    **{f"fails:{name}": found for name, (found, _) in FAILS.items()},
    **{f"device:{i}": machine({"device": spec}) for i, spec in enumerate(DEVICE_VALUES)},
}


OPTION_OF = {str(s["key"]): str(s["option"]) for s in schema()}

# Settings as users write them: the module must refuse a machine exactly when the CLI refuses its
# config file (exit 2, at every boot). By hand, and for each name and integer setting of the table.
SETTINGS_CORPUS: list[dict[str, Any]] = [
    {},
    {"archive": "old_roots", "keepDays": 40000},
    {"archive": "old_roots", "keepCount": 200000},
    {"keepDays": 7},
    {"subvolume": "/rootfs"},
    {"subvolume": ""},
    {"subvolume": "rootfs/"},
    {"subvolume": "sys/root"},
    {"subvolume": "a/../root"},
    {"protect": ["/persist"]},
    {"protect": [""]},
    {"protect": ["../x"]},
    {"protect": ["persist/", "srv/data"]},
    {"protect": []},
    {"archive": "old roots"},
    {"archive": ".rollback/x"},
    {"archive": ".rollback"},
    {"archive": "./"},
    {"archive": ".old"},
    {"archive": "root/old"},
    {"archive": "old/roots"},
    {"subvolume": "sys/root", "archive": "sys"},
    {"mode": "snapshot", "blank": "root/blank"},
    {"mode": "snapshot", "blank": "root"},
    {"mode": "snapshot", "blank": "blanks/root"},
    {"blank": "root/blank"},  # recreate mode: the blank is not used, where it lies does not matter
    {"blank": ".rollback/blank"},
    {"mode": "copy"},
    {"cleanup": "later"},
    {"subvolume": "persist"},
    *[
        {"archive": "old_roots", OPTION_OF[t.key]: n}
        for t in SETTINGS
        if t.limits
        for n in (t.limits[0] - 1, t.limits[0], t.limits[1], t.limits[1] + 1)
    ],
    *[{OPTION_OF[t.key]: ["/x"] if isinstance(t.default, tuple) else "/x"} for t in SETTINGS if t.path],
]
NAME_CORPUS = [
    *("root", "root/", "./root", "a//b", "a/./b", "@+.-_", "...", ".hidden", "-", "x" * 255, "x" * 256),
    *("/root", "", ".", "./", "..", "a/../b", "a/..", "old roots", "a:b", "a\tb", "a\nb", "é", "日本"),
    *(".rollback", ".rollback/x", "/".join(["x" * 200] * 5), "/".join(["x" * 200] * 6)),
]


def corpus_machine(settings: dict[str, Any]) -> Machine:
    """The minimal machine with these settings, its root mounted from the subvolume they name."""
    try:
        root = canonical_name(settings.get("subvolume", "root"))
    except ValueError:
        root = "root"
    return machine(settings, fs={"/": btrfs(root)})


def nix(*argv: str) -> subprocess.CompletedProcess[str]:
    if not shutil.which("nix-instantiate"):
        unavailable("nix-instantiate is not installed (Debian: nix-bin)")
    result = subprocess.run(["nix-instantiate", *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="session")
def nixpkgs_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """nixpkgs' lib from the kit, extracted outside the repository."""
    tarball = KIT / "nixpkgs-lib.tar.xz"
    if not tarball.is_file() or not (KIT / "upstream").is_dir():
        unavailable(f"{KIT} (nixpkgs' lib and upstream NixOS declarations) is not here; set ${KIT_ENV}")
    dest = tmp_path_factory.mktemp("nixpkgs-lib")
    subprocess.run(["tar", "-xJf", str(tarball), "-C", str(dest)], check=True)
    return dest / "nixpkgs-lib" / "lib"


@dataclass(frozen=True)
class Evaluated:
    machines: dict[str, dict[str, Any]]
    flake: dict[str, Any]
    package: dict[str, Any]
    store: dict[str, str]
    verdicts: dict[str, dict[str, Any]]
    names: list[dict[str, str | None]]
    stderr: str
    seconds: float


def evaluate(nixpkgs_lib: Path, machines: dict[str, Machine]) -> Evaluated:
    start = time.monotonic()
    result = nix(
        "--eval",
        "--strict",
        "--json",
        str(CHECK),
        *("--argstr", "kit", str(KIT)),
        *("--argstr", "nixpkgsLib", str(nixpkgs_lib)),
        *("--argstr", "machines", json.dumps(machines)),
        *("--argstr", "corpus", json.dumps({str(i): corpus_machine(s) for i, s in enumerate(SETTINGS_CORPUS)})),
        *("--argstr", "nameCorpus", json.dumps(NAME_CORPUS)),
    )
    found = json.loads(result.stdout)
    return Evaluated(
        found["machines"],
        found["flake"],
        found["package"],
        found["store"],
        found["verdicts"],
        found["names"],
        result.stderr,
        time.monotonic() - start,
    )


@pytest.fixture(scope="module")
def evaluated(nixpkgs_lib: Path) -> Evaluated:
    return evaluate(nixpkgs_lib, MACHINES)


# Parsing and the generated settings


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nix_file_parses(path: Path) -> None:
    nix("--parse", str(path))


def test_settings_json_is_generated_from_the_settings_table() -> None:
    committed = json.loads((ROOT / "packaging/nix/settings.json").read_text())
    assert committed == schema(), "regenerate: python -m rollback.settings > packaging/nix/settings.json"


def test_module_options_mirror_the_cli_flags(evaluated: Evaluated) -> None:
    options = set(evaluated.machines["boot-on"]["options"])
    assert options - MODULE_ONLY == {s["option"] for s in schema()}
    assert options >= MODULE_ONLY


def test_docs_describe_every_option(evaluated: Evaluated) -> None:
    docs = (ROOT / "docs/nixos.md").read_text()
    missing = [o for o in evaluated.machines["boot-on"]["options"] if f"`{o}`" not in docs]
    assert missing == [], "docs/nixos.md does not describe these boot.rollback options"


LOCKED = {"stop-boot-locked", "stop-boot-locked-no-cmdline"}  # the module's own warning (below)


def test_evaluation_prints_no_warning(evaluated: Evaluated) -> None:
    assert "warning" not in evaluated.stderr.lower(), evaluated.stderr
    warned = {name: m["warnings"] for name, m in evaluated.machines.items() if m["warnings"]}
    assert set(warned) == LOCKED, warned


@pytest.mark.parametrize("name", sorted(LOCKED))
def test_stop_boot_warns_when_emergency_mode_locks_root_out(evaluated: Evaluated, name: str) -> None:
    """stop-boot's emergency mode with emergencyAccess false (NixOS's default): root has no password
    there, the machine is stuck; the warning says how to let root in and how to boot on."""
    (warning,) = evaluated.machines[name]["warnings"]
    assert "emergencyAccess is false, so root cannot log in there" in warning
    assert "Set boot.initrd.systemd.emergencyAccess = true (no password) or to a hashed password" in warning
    assert ("rollback.skip on the kernel command line" in warning) == (name == "stop-boot-locked")
    assert "an older generation from the boot menu" in warning


def test_the_stand_in_warns_where_nixpkgs_does(nixpkgs_lib: Path) -> None:
    """The negative control of the test above: what issue 11 found warning in nixpkgs warns here."""

    def path(p: Path) -> str:
        return f"(/. + {json.dumps(str(p))})"

    expr = f"""let
      lib = import {path(KIT / "readfiletype-polyfill.nix")} {path(nixpkgs_lib)};
      pkgs = import {path(CHECK.parent / "stand-in-pkgs.nix")} {{ inherit lib; }};
      old = pkgs.python3Packages.buildPythonApplication {{ pname = "x"; version = "1"; pytestFlagsArray = [ ]; }};
    in [ pkgs.system pkgs.nixfmt-rfc-style.name old.name ]"""
    stderr = nix("--eval", "--strict", "-E", expr).stderr
    for name in ("'system' has been renamed", "nixfmt-rfc-style is now", "pytestFlagsArray is deprecated"):
        assert name in stderr, stderr


# The minimal machine: what the initrd gets


def test_the_impermanence_machine_passes_and_wants_its_device_instance(evaluated: Evaluated) -> None:
    found = evaluated.machines["impermanence"]
    assert found["failed"] == []
    instance = r"rollback@dev-disk-by\x2dlabel-nixos.service"
    assert found["wants"] == [instance]
    assert found["toml"] == {"device": "/dev/disk/by-label/nixos"}
    assert not any(name.startswith("rollback@") for name in found["units"]), "boot-on needs no services entry"


def test_cleanup_after_boot_installs_the_running_systems_cleanup_instance(evaluated: Evaluated) -> None:
    """cleanup = "after-boot": the package's rollback-cleanup@.service, its device instance wanted by
    multi-user.target as a drop-in (the template stays), and the initrd's config says after-boot."""
    found = evaluated.machines["cleanup-after-boot"]
    assert found["system"]["packages"] == [found["package"]]
    assert found["system"]["services"] == {
        "rollback-cleanup@dev-vda2": {
            "overrideStrategy": "asDropin",
            "wantedBy": ["multi-user.target"],
            "execStart": None,
        }
    }
    assert found["toml"]["cleanup"] == "after-boot"
    quiet = evaluated.machines["cleanup-after-boot-no-cmdline"]["system"]["services"]["rollback-cleanup@dev-vda2"]
    assert quiet["execStart"] == [
        "",
        f"{found['package']}/bin/rollback cleanup --device /%I --kernel-cmdline /dev/null",
    ]
    default = evaluated.machines["impermanence"]
    assert (default["system"]["packages"], default["system"]["services"]) == ([], {})
    assert "cleanup" not in default["toml"]


@pytest.mark.parametrize("name", ["impermanence", "cleanup-after-boot", "stop-boot"])
def test_the_running_system_gets_the_cli_and_the_initrds_settings(evaluated: Evaluated, name: str) -> None:
    """What the docs run after boot (`rollback status`, `skip-next`, ...): the package on the PATH, and
    /etc/rollback.toml, the initrd's own file, whatever the cleanup."""
    found = evaluated.machines[name]
    assert found["system"]["installed"] == [found["package"]]
    assert found["system"]["etc"] == {"rollback.toml": found["contents"]["/etc/rollback.toml"]}


def test_make_initrd_ng_gets_the_tree_and_the_config_not_the_package(evaluated: Evaluated) -> None:
    found = evaluated.machines["impermanence"]
    tree, package = found["tree"], found["package"]
    assert re.fullmatch(r"/nix/store/[0-9a-z]{32}-rollback-initrd-0\.1\.0", tree), tree
    assert found["packages"] == [tree]  # rollback@.service from the tree, not from the package
    given = {(entry["source"], entry["target"]) for entry in found["initrd"]}
    assert (tree, None) in given
    assert (found["contents"]["/etc/rollback.toml"], "/etc/rollback.toml") in given
    assert not any(package in source for source, _ in given), "the package's wrapper cannot run in the initrd"


def below_unit_directory(found: dict[str, Any]) -> list[str]:
    targets = [entry["target"] for entry in found["initrd"] if entry["target"]]
    return [t for t in targets if t.startswith("/etc/systemd/system/")]


@pytest.mark.parametrize("name", sorted(set(MACHINES) - {"contents-below-units"}))
def test_nothing_is_added_below_the_read_only_unit_directory(evaluated: Evaluated, name: str) -> None:
    """make-initrd-ng would write below /etc/systemd/system, one read-only store path: the build fails."""
    assert below_unit_directory(evaluated.machines[name]) == []


def test_a_drop_in_through_contents_is_seen_below_the_unit_directory(evaluated: Evaluated) -> None:
    """The negative control of the test above."""
    found = evaluated.machines["contents-below-units"]
    assert below_unit_directory(found) == ["/etc/systemd/system/sysroot.mount.d/x.conf"]


# Failure policies and the kernel command line, as units and as the laid-out unit directory


def stop_boot_unit_lines() -> list[str]:
    text = (ROOT / "units/rollback-stop-boot.conf").read_text()
    return [line for line in text.splitlines() if re.fullmatch(r"[A-Za-z]+=.*", line)]


def test_stop_boot_is_a_drop_in_that_sysroot_mount_requires(evaluated: Evaluated) -> None:
    unit = evaluated.machines["stop-boot"]["units"][INSTANCE]
    assert unit["overrideStrategy"] == "asDropin"
    assert unit["requiredBy"] == ["sysroot.mount"]
    body = unit["text"].splitlines()
    assert [line for line in body if "=" in line] == stop_boot_unit_lines()  # units/rollback-stop-boot.conf


def test_kernel_command_line_off_replaces_exec_start_with_the_trees_launcher(evaluated: Evaluated) -> None:
    found = evaluated.machines["no-cmdline"]
    unit = found["units"][INSTANCE]
    assert unit["overrideStrategy"] == "asDropin"
    assert unit["requiredBy"] == []
    for name, made in ((INSTANCE, unit), (EARLY, found["units"][EARLY])):
        template = tree_unit(f"{name.split('@')[0]}@.service", found["tree"])
        exec_start = re.findall(r"^ExecStart=(.*)$", template, re.MULTILINE)
        assert len(exec_start) == 1, f"units/{name} has one ExecStart"
        assert f"ExecStart=\nExecStart={exec_start[0]} --kernel-cmdline /dev/null\n" in made["text"]
        assert made["overrideStrategy"] == "asDropin" and "OnFailure" not in made["text"]


def tree_unit(name: str, tree: str) -> str:
    """units/NAME as the tree carries it: python_closure.py's own rewrite of its commands."""
    spec = importlib.util.spec_from_file_location(
        "python_closure", ROOT / "packaging/dracut/90rollback/python_closure.py"
    )
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    text: str = builder._unit(str(ROOT / "units" / name), tree)
    return text


def lay_out_units(found: dict[str, Any], store: dict[str, str], work: Path) -> Path:
    """Run each unit's makeUnit script and generateUnits' script (upstream systemd-lib.nix) as the
    builder would, in a stand-in store (work/store for /nix/store); return the initrd's
    /etc/systemd/system. Links point into the stand-in store, so that systemd on this host can read it."""
    fake = work / "store"
    fake.mkdir()

    def here(text: str) -> str:
        return text.replace("/nix/store/", f"{fake}/")

    script = found["unitsDir"]["build"]
    upstream = re.findall(r"for i in ([^;]*); do\n\s*fn=/nix/store/([^/]+)/example/systemd/system/\$i", script)
    assert len(upstream) == 2, "upstream units and .wants directories"
    for names, systemd in upstream:
        example = fake / systemd / "example/systemd/system"
        example.mkdir(parents=True, exist_ok=True)
        for name in names.split():
            if name.endswith(".wants"):
                (example / name).mkdir()
                (example / name / "systemd-journald.service").symlink_to("../systemd-journald.service")
            else:
                (example / name).write_text("[Unit]\n")
    lndir = Path(here(store["lndir"])) / "bin/lndir"
    lndir.parent.mkdir(parents=True)
    lndir.write_text('#!/bin/sh\ncp -rs "$1/." "$2/"\n')
    lndir.chmod(0o755)
    assert found["packages"] == [found["tree"]]
    unit_dir = Path(here(found["tree"])) / "lib/systemd/system"
    unit_dir.mkdir(parents=True)
    for name in ("rollback@.service", "rollback-early@.service"):
        (unit_dir / name).write_text(tree_unit(name, found["tree"]))

    def build(script: str, out: str, **env: str) -> None:
        run = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + here(script)],
            env={"PATH": os.environ["PATH"], "out": here(out), **env},
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr

    for i, made in enumerate(found["units"].values()):
        if made["enable"]:
            text = work / f"text-{i}"
            text.write_text(made["text"] or "")
            build(made["build"], made["out"], textPath=str(text))
    build(script, found["unitsDir"]["out"])
    return Path(here(found["unitsDir"]["out"]))


def systemd_verify(units: Path, unit: str) -> list[str]:
    """What systemd's loader says of `unit` in that unit directory (the other, stand-in units of the
    directory have their own complaints: only the lines about `unit` are returned)."""
    if not shutil.which("systemd-analyze"):
        unavailable("systemd-analyze is not installed")
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", unit],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
        capture_output=True,
        text=True,
    )
    return [line for line in (verified.stdout + verified.stderr).splitlines() if unit in line]


@pytest.mark.parametrize("name", ["stop-boot", "stop-boot-no-cmdline", "no-cmdline", "boot-on"])
def test_the_laid_out_units_extend_the_template(evaluated: Evaluated, tmp_path: Path, name: str) -> None:
    found = evaluated.machines[name]
    units = lay_out_units(found, evaluated.store, tmp_path)
    assert (units / "rollback@.service").resolve().is_file()
    assert not os.path.lexists(units / INSTANCE), "a whole unit for the instance replaces the template"
    assert f"Wants={INSTANCE}" in (units / "initrd.target.d/overrides.conf").read_text()
    stop_boot = "stop-boot" in name
    assert os.path.lexists(units / "sysroot.mount.requires" / INSTANCE) == stop_boot
    drop_in = units / f"{INSTANCE}.d/overrides.conf"
    assert drop_in.exists() == (name != "boot-on")
    text = drop_in.read_text() if drop_in.exists() else ""
    assert all((line in text.splitlines()) == stop_boot for line in stop_boot_unit_lines())
    assert ("--kernel-cmdline /dev/null" in text) == ("no-cmdline" in name)
    # systemd merges template and drop-in: its only complaint is that the tree is not on this host
    said = systemd_verify(units, INSTANCE)
    assert said, "systemd-analyze said nothing about the instance"
    assert [line for line in said if not re.search(rf"Command {found['tree']}/bin/\S+ is not executable", line)] == []


def test_a_services_entry_without_as_dropin_would_replace_the_template(evaluated: Evaluated, tmp_path: Path) -> None:
    """The negative control of the test above: what upstream makes of the naive way, and what systemd
    then loads (the entry's few lines, no ExecStart)."""
    units = lay_out_units(evaluated.machines["naive-instance"], evaluated.store, tmp_path)
    assert os.path.lexists(units / INSTANCE)
    assert any("ExecStart" in line for line in systemd_verify(units, INSTANCE))


def nixos_docs() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Install (NixOS)")
    return {
        "docs/nixos.md": (ROOT / "docs/nixos.md").read_text(),
        "README.md (NixOS)": readme[start : readme.index("\n## ", start + 1)],
    }


@pytest.mark.parametrize("name", ["docs/nixos.md", "README.md (NixOS)"])
def test_the_nixos_docs_mask_the_unit_only_under_boot_on(name: str) -> None:
    """Under stop-boot sysroot.mount requires the unit (above): masking it fails sysroot.mount's start
    job and stops the boot. Every paragraph that names rd.systemd.mask= says so and gives rollback.skip."""
    paragraphs = [p for p in nixos_docs()[name].split("\n\n") if "rd.systemd.mask=" in p]
    for paragraph in paragraphs:
        assert "stop-boot" in paragraph and "rollback.skip" in paragraph, paragraph
        assert "boot-on" in paragraph or "not `rd.systemd.mask=`" in paragraph, paragraph
    assert paragraphs or name != "docs/nixos.md"


# Archive and retention: the config file the CLI reads


def test_the_generated_config_file_is_accepted_by_the_cli(evaluated: Evaluated, tmp_path: Path) -> None:
    found = evaluated.machines["archive"]
    assert found["failed"] == []
    values = found["toml"]
    toml = tmp_path / "rollback.toml"
    toml.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    result = subprocess.run(
        rollback_argv("config", "--json", config=str(toml)),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["settings"]
    assert (shown["archive"], shown["keep-days"], shown["keep-count"], shown["keep-min"]) == ("old_roots", 14, 10, 2)
    assert (shown["mode"], shown["ignore-hibernation"], shown["device"]) == ("snapshot", True, DEVICE)
    assert shown["protect"] == ["persist", "nix", "srv"]


# Assertions


@pytest.mark.parametrize("name", sorted(FAILS))
def test_assertions_say_what_to_change(evaluated: Evaluated, name: str) -> None:
    failed = evaluated.machines[f"fails:{name}"]["failed"]
    expected = FAILS[name][1]
    assert len(failed) == len(expected), failed
    for message in expected:
        assert any(message in m for m in failed), (message, failed)


def test_every_assertion_of_the_module_fails_on_some_machine(evaluated: Evaluated) -> None:
    ours = [evaluated.machines[f"fails:{name}"]["ours"] for name in FAILS]
    count = len(evaluated.machines["boot-on"]["ours"])
    assert count == (ROOT / "packaging/nix/module.nix").read_text().count("assertion =")
    assert [i for i in range(count) if all(oks[i] for oks in ours)] == []


# What the CLI refuses at every boot, the module refuses at evaluation


def test_the_name_rule_is_the_clis(evaluated: Evaluated) -> None:
    """packaging/nix/names.nix (builtins.match) and rollback/names.py on one corpus: the same canonical
    spelling, or the same problem."""

    def python(value: str) -> dict[str, str | None]:
        try:
            return {"canonical": canonical_name(value), "problem": None}
        except ValueError as error:
            return {"canonical": None, "problem": str(error)}

    assert dict(zip(NAME_CORPUS, evaluated.names, strict=True)) == {v: python(v) for v in NAME_CORPUS}


def test_integer_options_have_the_clis_range(evaluated: Evaluated) -> None:
    types = evaluated.machines["boot-on"]["types"]
    integers = [s for s in SETTINGS if s.parser.label == "int"]
    assert integers and all(s.limits for s in integers)
    for setting in integers:
        low, high = setting.limits or (0, 0)
        assert types[OPTION_OF[setting.key]] == f"integer between {low} and {high} (both inclusive)", setting.key


def written_config(settings: dict[str, Any]) -> dict[str, Any]:
    """What the module writes for these settings: the device, and every setting not at its default."""
    defaults = {str(s["option"]): (str(s["key"]), s["default"]) for s in schema()}
    return {"device": DEVICE} | {defaults[o][0]: v for o, v in settings.items() if v != defaults[o][1]}


def cli_exit(values: dict[str, Any], toml: Path) -> int:
    toml.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    argv = rollback_argv("config", config=str(toml), cmdline="/dev/null")
    return subprocess.run(argv, capture_output=True, text=True).returncode


def test_the_module_refuses_exactly_what_the_cli_refuses(evaluated: Evaluated, tmp_path: Path) -> None:
    """For each machine of the corpus: evaluation fails (an assertion or an option's type) exactly when
    `rollback config` exits 2 on its config file; an accepted machine's file is the one the CLI read."""
    with ThreadPoolExecutor() as pool:
        exits = list(
            pool.map(
                lambda i: cli_exit(written_config(SETTINGS_CORPUS[i]), tmp_path / f"{i}.toml"),
                range(len(SETTINGS_CORPUS)),
            )
        )
    drift = []
    for i, settings in enumerate(SETTINGS_CORPUS):
        verdict = evaluated.verdicts[str(i)]
        assert exits[i] in (0, 2), (settings, exits[i])
        if verdict["refused"] != (exits[i] == 2):
            drift.append((settings, verdict["failed"], exits[i]))
        elif not verdict["refused"]:
            assert verdict["toml"] == written_config(settings), settings
    assert drift == [], "the module and the CLI disagree"
    assert set(exits) == {0, 2}


@pytest.mark.parametrize(
    "name", ["boot-on", "impermanence", "archive", "root-by-name", "root-entry-disabled", "home-on-another-disk"]
)
def test_good_machines_fail_no_assertion(evaluated: Evaluated, name: str) -> None:
    assert evaluated.machines[name]["failed"] == []


def test_the_root_is_found_by_mount_point_whatever_its_name(evaluated: Evaluated) -> None:
    for name in ("root-by-name", "root-entry-disabled"):
        found = evaluated.machines[name]
        assert (found["wants"], found["toml"]) == ([INSTANCE], {"device": DEVICE}), name


# Devices


@pytest.mark.parametrize("spec", DEVICES)
def test_devices_map_as_devspec_maps_them(evaluated: Evaluated, spec: str) -> None:
    found = evaluated.machines[f"device:{DEVICE_VALUES.index(spec)}"]
    assert found["failed"] == []
    assert found["toml"]["device"] == device_path(spec)


@pytest.mark.parametrize("spec", DEVICE_VALUES)
def test_the_instance_is_the_escaped_device_path(evaluated: Evaluated, spec: str) -> None:
    """Named as `systemd-escape --path` names it, so that its .device unit and `/%I` are the device's."""
    if not shutil.which("systemd-escape"):
        unavailable("systemd-escape is not installed")
    found = evaluated.machines[f"device:{DEVICE_VALUES.index(spec)}"]
    path = found["toml"]["device"]
    escaped = subprocess.run(["systemd-escape", "--path", path], capture_output=True, text=True, check=True)
    assert found["wants"] == [f"rollback@{escaped.stdout.strip()}.service"]


@pytest.mark.parametrize("spec", DEVICE_VALUES)
def test_a_device_named_apart_from_the_roots_waits_without_a_job_timeout(evaluated: Evaluated, spec: str) -> None:
    """boot.rollback.device spelt apart from the root's: its .device unit had systemd's default 90 s, and a
    LUKS passphrase typed later failed rollback@. A drop-in (the unit itself is udev's); none for the
    root's own device, which waits as sysroot.mount's does."""
    found = evaluated.machines[f"device:{DEVICE_VALUES.index(spec)}"]
    escaped = found["wants"][0].removeprefix("rollback@").removesuffix(".service")
    unit = found["units"][f"{escaped}.device"]
    assert unit["overrideStrategy"] == "asDropin"
    assert unit["text"] == "[Unit]\nJobTimeoutSec=infinity\nJobRunningTimeoutSec=infinity\n"
    assert not any(name.endswith(".device") for name in evaluated.machines["impermanence"]["units"])


@pytest.mark.parametrize(("name", "message"), [("empty-tag", "names no"), ("device-not-a-path", "neither")])
def test_devspec_refuses_what_the_module_refuses(name: str, message: str) -> None:
    spec = FAILS[name][0]["boot"]["rollback"]["device"]
    with pytest.raises(ValueError, match=message):
        device_path(spec)


def test_a_root_label_maps_to_its_by_label_link(evaluated: Evaluated) -> None:
    """NixOS writes `label = "my root"` as /dev/disk/by-label/my\\040root (fstab's escape); udev's link is
    /dev/disk/by-label/my\\x20root."""
    found = evaluated.machines["root-by-label"]
    assert found["failed"] == []
    assert found["toml"] == {"device": device_path("LABEL=my root")}


# Turned off


def test_the_disabled_module_changes_nothing(evaluated: Evaluated) -> None:
    disabled, without = evaluated.machines["disabled"], evaluated.machines["without-module"]
    assert disabled["initrdDrv"] == without["initrdDrv"]  # the same initrd, to the derivation
    assert disabled["unitsDir"] == without["unitsDir"]
    assert (disabled["failed"], disabled["tree"], disabled["toml"]) == ([], None, None)
    assert disabled["system"] == without["system"] == {"installed": [], "packages": [], "services": {}, "etc": {}}


# The flake and the package


def test_the_flake_outputs_evaluate(evaluated: Evaluated) -> None:
    flake = evaluated.flake
    for system in ("x86_64-linux", "aarch64-linux"):
        assert flake["packages"][system] == {"default": "rollback-0.1.0", "initrd": "rollback-initrd-0.1.0"}
        assert flake["checks"][system] == {
            "package": "rollback-0.1.0",
            "initrd": "rollback-initrd-0.1.0",
            "vm": "vm-test-run-rollback",
        }
        assert flake["formatter"][system].startswith("nixfmt-")
    assert flake["module"] is True


def test_the_package_relaxes_the_btrfsutil_bound_pyproject_sets_for_debian(evaluated: Evaluated) -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("btrfsutil") and "<" in d for d in dependencies)
    assert evaluated.package["pythonRelaxDeps"] == ["btrfsutil"]


def shipped_files(evaluated: Evaluated) -> list[str]:
    """What lib.fileset selects, of what a flake sees (git's files, tracked or not ignored)."""
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        unavailable("not a git checkout: the files a flake would see are unknown")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    present = {f for f in listed if f and (ROOT / f).is_file()}
    return sorted(set(evaluated.package["files"]) & present)


def test_the_check_phase_passes_on_exactly_the_shipped_files(evaluated: Evaluated, tmp_path: Path) -> None:
    """pytestCheckHook's run, replayed on a copy of exactly the fileset: a test that imports or reads a
    file the package does not ship fails here (bench/, packaging/ were such files)."""
    package = evaluated.package
    src = tmp_path / "src"
    for name in shipped_files(evaluated):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    for glob in package["disabledTestPaths"]:  # the hook aborts on a glob that matches nothing
        assert list(src.glob(glob)), glob
    for path in package["enabledTestPaths"]:
        assert (src / path).exists(), path
    # as in the build sandbox: a bare interpreter, the dependencies reachable only through PYTHONPATH (as
    # nixpkgs' python setup hook puts them), so a test that replaces PYTHONPATH loses them here too
    deps = os.pathsep.join(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTHONPATH")} | {"PYTHONPATH": deps}
    python = getattr(sys, "_base_executable", sys.executable)
    where = subprocess.run(
        [python, "-c", "import rollback, bench.run; print(rollback.__file__)"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0 and where.stdout.startswith(str(src)), where.stdout + where.stderr
    result = subprocess.run(
        [
            python,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            *package["enabledTestPaths"],
            *(f"--ignore-glob={glob}" for glob in package["disabledTestPaths"]),
        ],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed in [\d.]+s", summary), result.stdout[-4000:]  # nothing skipped
