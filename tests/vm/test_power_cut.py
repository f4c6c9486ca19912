"""Pull the plug while the rollback deletes a lot, several times; the next boot must finish the job."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.support import vm as harness
from tests.support.layout import outside_root
from tests.support.vm import assert_ran_before_sysroot, events
from tests.support.vm_session import Vm

pytestmark = pytest.mark.vm
CUTS = 4


def test_power_cuts_during_the_rollback_then_a_clean_boot(vm: Vm, tmp_path: Path) -> None:
    image = vm.image("heavy", tmp_path / "disk.img")
    before = harness.image_state(image)
    delays = [round(random.Random(20261125 + n).uniform(0.3, 2.5), 2) for n in range(CUTS)]  # seeded: reproducible
    interrupted = []
    for number, delay in enumerate(delays):
        cut = vm.cut_power("boot-on", image, delay, name=f"power-cut-{number}")
        assert not cut.facts, f"boot {number} finished before the cut at {delay}s: cut earlier"
        state = harness.image_state(image)
        assert outside_root(state) == outside_root(before), f"lost data in cut {number}"
        pending = [p for p in state.subvolume_paths() if p.startswith(".rollback/trash/")]
        interrupted.append((delay, "root" in state.subvolume_paths(), len(pending)))
    print("power cuts (delay s, root present, trash entries):", interrupted)
    assert any(trash for _, _, trash in interrupted), f"no cut landed after changes began: {interrupted}"
    boot = vm.boot("boot-on", image, name="after-power-cuts")
    after = harness.image_state(image)
    finished = events(boot, "finished")
    assert len(finished) == 1, boot.serial[-3000:]
    assert_ran_before_sysroot(boot)
    assert outside_root(after) == outside_root(before)
    assert after.under("root") == {"root": "dir:40755"}
    assert [p for p in after.subvolume_paths() if p.startswith(("root/", ".rollback/"))] == []
