"""What a user pays at boot, in the VM: the critical path from the root device unit becoming active to
the rollback unit finishing (systemd's monotonic timestamps), for the project (cleanup after boot,
the early start) and for the shell baseline in the same initramfs setup, at 0 and 1000 nested
subvolumes; plus each unit's own duration.

On Debian 13 (--platform trixie: tests/support/trixie.py's userland, rollback installed with
scripts/install, trixie's dracut and kernel) the baseline is the seed's own script as published
(bench/dracut/90rollback-seed: `btrfs subvolume delete -R`, which Debian 12's btrfs-progs lacks).

usage (root): .venv/bin/python -m bench.critical_path [--platform debian12|trixie] [--boots N]
              [--nested 0,1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.support import trixie
from tests.support import vm as harness
from tests.support.layout import populate

DEVICE_UNIT = "dev-vda.device"
PROJECT = harness.Variant("cp-project", config='cleanup = "after-boot"')
BASELINES = {
    "debian12": harness.Variant("cp-baseline", modules=("rollback-baseline",)),
    "trixie": harness.Variant("cp-seed", modules=("rollback-seed",)),
}
UNIT = {"project": "rollback@", "baseline": "rollback-baseline", "seed": "rollback-seed"}


def stamp(boot: harness.Boot, unit: str, field: str) -> int:
    value = int(boot.unit(unit).get(field, "0") or 0)
    if value <= 0:
        raise RuntimeError(f"boot {boot.name}: {unit} has no {field}; serial log: {harness.ARTIFACTS / boot.name}")
    return value


def measure(boot: harness.Boot, who: str) -> dict[str, float]:
    (unit,) = boot.units(UNIT[who])  # who: project, baseline or seed
    if boot.unit(unit).get("ExecMainStatus") != "0":
        raise RuntimeError(f"boot {boot.name}: {unit} exited {boot.unit(unit).get('ExecMainStatus')}")
    device = stamp(boot, DEVICE_UNIT, "ActiveEnterTimestampMonotonic")
    finished = stamp(boot, unit, "ActiveEnterTimestampMonotonic")  # oneshot, RemainAfterExit: done
    found = {
        "critical_s": (finished - device) / 1e6,
        "unit_s": (
            stamp(boot, unit, "ExecMainExitTimestampMonotonic") - stamp(boot, unit, "ExecMainStartTimestampMonotonic")
        )
        / 1e6,
    }
    if who == "project":
        (early,) = boot.units("rollback-early@")
        found["early_ready_before_device_s"] = (device - stamp(boot, early, "ActiveEnterTimestampMonotonic")) / 1e6
    return found


def platform(name: str, work: Path) -> tuple[harness.Kernel, Callable[[harness.Variant], Path]]:
    """The kernel to boot and how to build an initramfs, on the host's Debian 12 or in trixie."""
    if name == "trixie":
        root = work / "trixie"
        trixie.userland(root)
        trixie.install(root)
        kernel = trixie.find_kernel(root)
        return kernel, lambda variant: trixie.build_initramfs(root, kernel, variant, work)
    found = harness.find_kernel()
    if found is None or harness.missing_tools():
        raise SystemExit("needs the Debian cloud kernel, dracut, qemu (scripts/setup installs them)")
    host: harness.Kernel = found
    return host, lambda variant: harness.build_initramfs(host, variant, work, sys.executable)


def critical_path(boots: int, nested_counts: list[int], on: str = "debian12") -> dict[str, object]:
    results: dict[str, object] = {"platform": on}
    baseline = BASELINES[on]
    who_is = {"project": PROJECT, baseline.modules[0].removeprefix("rollback-"): baseline}
    with tempfile.TemporaryDirectory(prefix="rollback-critical.") as tmp:
        work = Path(tmp)
        kernel, build = platform(on, work)
        images = {who: build(variant) for who, variant in who_is.items()}
        for nested in nested_counts:
            template = harness.new_image(work / f"template-{nested}.img")
            with harness.attached(template, read_only=False) as top:
                populate(
                    top,
                    nested=[f"root/srv/n{i // 30}/m{i}" if i % 30 else f"root/srv/n{i // 30}" for i in range(nested)],
                )
            for who in who_is:
                runs = []
                for number in range(boots):
                    disk = harness.copy_image(template, work / f"disk-{who}.img")
                    boot = harness.boot(kernel, images[who], disk, "", name=f"critical-{on}-{who}-{nested}-{number}")
                    runs.append(measure(boot, who))
                    disk.unlink()
                summary: dict[str, object] = {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
                summary["critical_range_s"] = [
                    round(min(r["critical_s"] for r in runs), 3),
                    round(max(r["critical_s"] for r in runs), 3),
                ]
                summary["boots"] = len(runs)
                results[f"{who}@{nested}"] = summary
                print(f"{who} at {nested} nested: {summary}", flush=True)
            template.unlink()
    for nested in nested_counts:
        ours, theirs = (results[f"{who}@{nested}"] for who in who_is)
        assert isinstance(ours, dict) and isinstance(theirs, dict)
        results[f"ratio@{nested}"] = round(float(ours["critical_s"]) / float(theirs["critical_s"]), 2)
    if len(nested_counts) >= 2:
        first, last = nested_counts[0], nested_counts[-1]
        for who in who_is:
            low, high = results[f"{who}@{first}"], results[f"{who}@{last}"]
            assert isinstance(low, dict) and isinstance(high, dict)
            results[f"{who}_growth_{first}_to_{last}"] = round(float(high["critical_s"]) / float(low["critical_s"]), 2)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--platform", choices=sorted(BASELINES), default="debian12")
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--nested", default="0,1000")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = critical_path(args.boots, [int(n) for n in args.nested.split(",")], args.platform)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
