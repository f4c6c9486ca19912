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
LATER = (1.8, 2.6, 3.4, 4.2)  # a slower machine: later cuts until one lands after a commit


@pytest.mark.parametrize("variant", ["boot-on", "after-boot"])
def test_power_cuts_during_the_rollback_then_a_clean_boot(vm: Vm, tmp_path: Path, variant: str) -> None:
    """Deletion at boot: cuts during the recursive delete of the old root. Deletion after boot
    (cleanup never ran): cuts while a boot deletes what the previous boot left, before it moves its own."""
    image = vm.image("heavy", tmp_path / "disk.img")
    before = harness.image_state(image)
    left = 0
    if variant == "after-boot":  # a first boot leaves the heavy old root in the trash
        vm.boot(variant, image, name="after-boot-first")
        with harness.attached(image, read_only=False) as top:  # the running system dirties the new root
            (top / "root" / "cruft").write_text("written after boot\n")
        left = len([p for p in harness.image_state(image).subvolume_paths() if p.startswith(".rollback/trash/")])
        assert left > 400
    # seeded: reproducible; the window is the work itself (the early start leaves no import time before
    # it): the recursive delete at boot; or, after boot, the leftovers' delete and its commit
    window = {"boot-on": 1.3, "after-boot": 2.5}[variant]
    delays = [round(random.Random(20261125 + n).uniform(0.3, window), 2) for n in range(CUTS)]
    interrupted: list[tuple[float, bool, int, bool]] = []  # delay, root present, trash, cut mid-boot
    for number, delay in enumerate([*delays, *LATER]):
        if number >= CUTS and any(trash != left for _, _, trash, mid_boot in interrupted if mid_boot):
            break  # the later cuts only make sure one lands after changes reached the disk
        cut = vm.cut_power(variant, image, delay, name=f"power-cut-{variant}-{number}")
        assert not cut.facts or number >= CUTS, f"boot {number} finished before the cut at {delay}s: cut earlier"
        state = harness.image_state(image)
        assert outside_root(state) == outside_root(before), f"lost data in cut {number}"
        pending = [p for p in state.subvolume_paths() if p.startswith(".rollback/trash/")]
        interrupted.append((delay, "root" in state.subvolume_paths(), len(pending), not cut.facts))
    print("power cuts (delay s, root present, trash subvolumes):", interrupted)
    # a cut that came after the boot had finished (facts written) proves nothing: count those mid-boot
    landed = [trash != left for _, _, trash, mid_boot in interrupted if mid_boot]
    assert any(landed), f"no cut landed after changes began: {interrupted}"
    boot = vm.boot(variant, image, name=f"after-power-cuts-{variant}")
    after = harness.image_state(image)
    finished = events(boot, "finished")
    assert len(finished) == 1, boot.serial[-3000:]
    assert_ran_before_sysroot(boot)
    assert outside_root(after) == outside_root(before)
    assert after.under("root") == {"root": "dir:40755"}
    assert [p for p in after.subvolume_paths() if p.startswith("root/")] == []
    trash = [p for p in after.subvolume_paths() if p.startswith(".rollback/trash/") and p.count("/") == 2]
    assert len(trash) == (1 if variant == "after-boot" else 0)  # today's old root waits for the cleanup
