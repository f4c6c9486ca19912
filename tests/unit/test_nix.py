"""The NixOS module, checked offline: every .nix file parses, and module.nix evaluates (against a
stub of the few nixpkgs functions it uses, tests/nix/eval-module.nix) to options that mirror the
CLI, a config file the CLI accepts, and assertions with clear messages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rollback.settings import schema
from tests.conftest import unavailable

ROOT = Path(__file__).parents[2]
NIX_FILES = sorted(p for p in ROOT.rglob("*.nix") if ".venv" not in p.parts)
MODULE_ONLY = {"enable", "package", "failurePolicy", "kernelCommandLine"}
GOOD: dict[str, Any] = {
    "rollback": {"enable": True},
    "systemdInitrd": True,
    "fileSystems": {
        "/": {"device": "/dev/vda2", "fsType": "btrfs", "options": ["subvol=root", "compress=zstd"]},
        "/persist": {"device": "/dev/vda2", "fsType": "btrfs", "options": ["subvol=persist"], "neededForBoot": True},
        "/nix": {"device": "/dev/vda2", "fsType": "btrfs", "options": ["subvol=nix"]},
    },
}


def nix(*argv: str) -> str:
    if not shutil.which("nix-instantiate"):
        unavailable("nix-instantiate is not installed (Debian: nix-bin)")
    result = subprocess.run(["nix-instantiate", *argv], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def evaluate(machine: dict[str, Any]) -> dict[str, Any]:
    out = nix(
        "--eval", "--strict", "--json", str(ROOT / "tests/nix/eval-module.nix"), "--argstr", "json", json.dumps(machine)
    )
    found: dict[str, Any] = json.loads(out)
    return found


def with_(**changes: Any) -> dict[str, Any]:
    machine: dict[str, Any] = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key == "rollback":
            machine["rollback"].update(value)
        elif key == "fs":
            machine["fileSystems"].update(value)
        else:
            machine[key] = value
    return machine


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nix_file_parses(path: Path) -> None:
    nix("--parse", str(path))


def test_settings_json_is_generated_from_the_settings_table() -> None:
    committed = json.loads((ROOT / "packaging/nix/settings.json").read_text())
    assert committed == schema(), "regenerate: python -m rollback.settings > packaging/nix/settings.json"


def test_module_options_mirror_the_cli_flags() -> None:
    options = set(evaluate(GOOD)["options"])
    assert options - MODULE_ONLY == {s["option"] for s in schema()}
    assert options >= MODULE_ONLY


def test_a_good_machine_passes_and_enables_the_device_unit() -> None:
    found = evaluate(GOOD)
    assert found["failed"] == []
    assert found["wants"] == ["rollback@dev-vda2.service"]
    assert found["toml"] == {"device": "/dev/vda2"}


def test_the_generated_config_file_is_accepted_by_the_cli(tmp_path: Path) -> None:
    machine = with_(rollback={"archive": "old", "keepCount": 5, "protect": ["persist", "srv"], "mode": "snapshot"})
    values = evaluate(machine)["toml"]
    toml = tmp_path / "rollback.toml"
    toml.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    result = subprocess.run(
        [sys.executable, "-m", "rollback", "config", "--json", "--config", str(toml), "--kernel-cmdline", "/dev/null"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["settings"]
    assert (shown["archive"], shown["keep-count"], shown["mode"]) == ("old", 5, "snapshot")
    assert shown["protect"] == ["persist", "srv"]


@pytest.mark.parametrize(
    ("machine", "message"),
    [
        (with_(systemdInitrd=False), "set boot.initrd.systemd.enable = true"),
        (with_(fs={"/": {"device": "/dev/vda2", "fsType": "ext4", "options": []}}), 'fsType must be "btrfs"'),
        (
            with_(fs={"/": {"device": "/dev/vda2", "fsType": "btrfs", "options": ["subvol=@"]}}),
            'add "subvol=root" to fileSystems."/".options',
        ),
        (
            with_(fs={"/persist": {"device": "/dev/vda2", "fsType": "btrfs", "options": ["subvol=persist"]}}),
            'set neededForBoot = true on fileSystems."/persist"',
        ),
        (
            with_(
                rollback={"subvolume": "persist"},
                fs={"/": {"device": "/dev/vda2", "fsType": "btrfs", "options": ["subvol=persist"]}},
            ),
            "is in boot.rollback.protect",
        ),
        (with_(rollback={"keepDays": 7}), "set boot.rollback.archive"),
    ],
)
def test_assertions_say_what_to_change(machine: dict[str, Any], message: str) -> None:
    failed = evaluate(machine)["failed"]
    assert any(message in m for m in failed), failed


def test_stop_boot_policy_installs_the_drop_ins() -> None:
    contents = evaluate(with_(rollback={"failurePolicy": "stop-boot", "kernelCommandLine": False}))["contents"]
    assert "/etc/systemd/system/sysroot.mount.d/rollback.conf" in contents
    assert "/etc/systemd/system/rollback@dev-vda2.service.d/stop-boot.conf" in contents
    assert "/etc/systemd/system/rollback@dev-vda2.service.d/no-kernel-cmdline.conf" in contents


def test_disabled_module_does_nothing() -> None:
    found = evaluate(with_(rollback={"enable": False}))
    assert (found["failed"], found["wants"], found["contents"]) == ([], [], [])
