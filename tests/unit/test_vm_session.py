"""The VM tier's one retry (tests/support/vm_session.py), with qemu replaced: a guest that died
having written nothing is booted again once; anything else that left no facts fails the test."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import pytest

from tests.support import vm as harness
from tests.support.vm import Boot, Kernel
from tests.support.vm_session import Vm

DIED = Boot("x", 1.0, {}, "[    1.0] Kernel panic - not syncing: test\n", False, 0)
BOOTED = Boot("x", 1.0, {"stage": b"boot\n"}, "ROLLBACK-TEST-FACTS-WRITTEN boot\n", False, 0)


def _session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcomes: list[tuple[Boot, bool]]) -> tuple[Vm, Path]:
    """A session whose boots return `outcomes` in turn; (boot, True) also writes to the image."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    os.utime(image, ns=(1, 1))  # a write during the fake boot moves the stamp
    monkeypatch.setattr(harness, "ARTIFACTS", tmp_path / "artifacts")
    pending = list(outcomes)

    def fake_boot(kernel: Kernel, initramfs: Path, disk: Path, append: str, **kw: object) -> Boot:
        boot, writes = pending.pop(0)
        boot = dataclasses.replace(boot, name=str(kw["name"]))
        serial = harness.ARTIFACTS / boot.name / "serial.log"
        serial.parent.mkdir(parents=True, exist_ok=True)
        serial.write_text(boot.serial)
        if writes:
            with disk.open("r+b") as handle:
                handle.write(b"written")
        return boot

    monkeypatch.setattr(harness, "boot", fake_boot)
    vm = Vm(Kernel("6.1.0-test", tmp_path / "vmlinuz"), tmp_path)
    return vm, image


def test_a_guest_that_died_before_writing_is_booted_again_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vm, image = _session(tmp_path, monkeypatch, [(DIED, False), (BOOTED, True)])
    with pytest.warns(UserWarning, match="before writing to any disk"):
        assert vm.boot_initramfs(tmp_path / "initramfs.img", image, name="normal").facts == BOOTED.facts
    assert [r["boot"] for r in vm.retries] == ["normal"]
    assert "Kernel panic" in (harness.ARTIFACTS / "normal" / "serial.first.log").read_text()


@pytest.mark.parametrize(
    "outcomes",
    [
        [(DIED, True)],  # it wrote to the image: the scenario ran, it cannot be repeated
        [(DIED, False), (DIED, False)],  # died twice: not a fluke
        [(Boot("x", 240.0, {}, "", True, None), False)],  # a time-out is never retried
    ],
    ids=["wrote", "twice", "timed-out"],
)
def test_anything_else_without_facts_fails_with_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcomes: list[tuple[Boot, bool]]
) -> None:
    vm, image = _session(tmp_path, monkeypatch, outcomes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(pytest.fail.Exception, match=r"Kernel panic|timed out"):
            vm.boot_initramfs(tmp_path / "initramfs.img", image, name="normal")
    assert len(caught) == (1 if len(outcomes) == 2 else 0)
    assert len(vm.retries) == len(outcomes) - 1
