"""The in-initrd figure: the rollback unit's duration (systemd's own timestamps) under qemu, for the
project and for the shell baseline in the same initramfs setup, and the size each adds."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from rollback.events import EVENTS
from tests.support import vm as harness
from tests.support.layout import populate

VARIANTS = {
    "project": harness.Variant("bench-project"),
    "baseline": harness.Variant("bench-baseline", modules=("rollback-baseline",)),
    "none": harness.Variant("bench-none", modules=()),
}
FLOOR = Path(__file__).with_name("floor.py")
FLOOR_IN_IMAGE = "/usr/lib/rollback-floor.py"
STARTED = EVENTS["started"].message_id
UNITS = {"project": "rollback@", "floor": "rollback@", "baseline": "rollback-baseline"}


def floor_variant(project: Path, work: Path) -> harness.Variant:
    """The project's initramfs with the rollback unit running bench/floor.py instead of the
    service (a drop-in replaces ExecStart): same interpreter, same closure, same unit."""
    wrapper = subprocess.run(
        ["lsinitrd", "-f", "usr/bin/rollback", str(project)], capture_output=True, text=True, check=True
    ).stdout
    entry = "from rollback.entry import main; main()"
    if entry not in wrapper:
        raise RuntimeError(f"unexpected /usr/bin/rollback in {project}:\n{wrapper}")
    floor = work / "rollback-floor"
    floor.write_text(wrapper.replace(entry, f'exec(open("{FLOOR_IN_IMAGE}").read())'))
    floor.chmod(0o755)
    dropin = work / "floor.conf"
    dropin.write_text("[Service]\nExecStart=\nExecStart=/usr/bin/rollback-floor run --device /%I\n")
    return harness.Variant(
        "bench-floor",
        includes=(
            (str(floor), "/usr/bin/rollback-floor"),
            (str(FLOOR), FLOOR_IN_IMAGE),
            (str(dropin), "/etc/systemd/system/rollback@.service.d/floor.conf"),
        ),
    )


def unit_seconds(boot: harness.Boot, prefix: str) -> float:
    for name in boot.units(prefix):
        unit = boot.unit(name)
        start, end = int(unit["ExecMainStartTimestampMonotonic"]), int(unit["ExecMainExitTimestampMonotonic"])
        if end > start > 0:
            if unit.get("ExecMainStatus") != "0":
                raise RuntimeError(f"boot {boot.name}: {name} exited {unit.get('ExecMainStatus')}")
            return (end - start) / 1e6
    raise RuntimeError(f"boot {boot.name}: no finished {prefix} unit; serial log: {harness.ARTIFACTS / boot.name}")


def vm_results(boots: int) -> dict[str, object]:
    kernel = harness.find_kernel()
    if kernel is None or harness.missing_tools():
        raise SystemExit("bench --vm needs the Debian cloud kernel, dracut, qemu (scripts/setup installs them)")
    with tempfile.TemporaryDirectory(prefix="rollback-bench-vm.") as tmp:
        work = Path(tmp)
        images = {k: harness.build_initramfs(kernel, v, work, sys.executable) for k, v in VARIANTS.items()}
        images["floor"] = harness.build_initramfs(kernel, floor_variant(images["project"], work), work, sys.executable)
        template = harness.new_image(work / "template.img")
        with harness.attached(template, read_only=False) as top:
            populate(top)
        results: dict[str, object] = {"initramfs_bytes": {k: p.stat().st_size for k, p in images.items()}}
        durations: dict[str, list[float]] = {who: [] for who in UNITS}
        for number in range(boots):
            for who, prefix in UNITS.items():
                disk = harness.copy_image(template, work / f"disk-{who}-{number}.img")
                boot = harness.boot(kernel, images[who], disk, "", name=f"bench-{who}-{number}")
                durations[who].append(unit_seconds(boot, prefix))
                ran_service = any(e.get("MESSAGE_ID") == STARTED for e in boot.journal())
                if ran_service != (who == "project"):  # the floor must replace the service, not add to it
                    raise RuntimeError(f"boot {boot.name}: the service ran: {ran_service}")
                disk.unlink()
        for who, values in durations.items():
            results[who] = {
                "median_s": round(statistics.median(values), 3),
                "range_s": [round(min(values), 3), round(max(values), 3)],
                "boots": len(values),
            }
            print(f"VM unit ({who}): median {statistics.median(values):.3f} s over {len(values)} boots", flush=True)
        project, baseline = statistics.median(durations["project"]), statistics.median(durations["baseline"])
        results["ratio"] = round(project / baseline, 2)
        results["floor_ratio"] = round(statistics.median(durations["floor"]) / baseline, 2)
        sizes = results["initramfs_bytes"]
        assert isinstance(sizes, dict)
        results["added_bytes"] = {who: sizes[who] - sizes["none"] for who in ("project", "baseline")}
        print(f"VM ratio {results['ratio']}; initramfs added: {results['added_bytes']}", flush=True)
        return results
