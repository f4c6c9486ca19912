"""Benchmark the rollback against the seed-equivalent shell script (bench/baseline.sh).

Host: one loop-device image; for each (files, nested subvolumes, mode) the two commands run
alternately, several times each, from identical layouts (a writable snapshot of a template with
the files, plus freshly created nested subvolumes), after the kernel cleaner has finished with the
previous run. Figures are wall-clock times of the whole command (interpreter or shell start, mount,
work, umount); the ratio is project median / baseline median from the same run. Also: the import
cost of the boot path with and without deferred imports, and (with --vm) the unit's duration in a
dracut initramfs under qemu, for both. Writes docs/benchmarks.md, benchmarks.json and a chart.

usage (root): .venv/bin/python -m bench.run [--quick] [--reps N] [--vm] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import btrfsutil

from tests.support.cli import rollback_argv

REPO = Path(__file__).parents[1]
BASELINE = REPO / "bench" / "baseline.sh"
INITRD_RELEASE = Path("/etc/initrd-release")  # systemd's mark of an initrd (bench-private: initrd_mark)
_MARK = 'NAME="rollback benchmark"\n'
FLOOR_AFTER_BOOT = REPO / "bench" / "floor_after_boot.sh"  # after-boot rows: the same changes, no checks
# As the initramfs runs it (packaging/dracut/90rollback/module-setup.sh): isolated, no site.
_PATHS = [str(REPO), *(p for p in sys.path if p.endswith("site-packages"))]
_ON_PATH = f"import sys; sys.path += {_PATHS!r}; "  # what every `-c` of the project's starts with
ROLLBACK = [
    os.path.realpath(sys.executable),
    "-I",
    "-S",
    "-c",
    _ON_PATH + "sys.argv[0] = 'rollback'\nfrom rollback.entry import main; main()",
]
MODES = {
    "recreate": ([], "recreate"),
    "snapshot": (["--mode", "snapshot"], "snapshot"),
    "keep": (["--archive", "old_roots", "--keep-days", "30", "--keep-min", "0"], "keep"),
    # deletion after boot (rollback cleanup, on the running system) against the script deleting at boot
    "after-boot": (["--cleanup", "after-boot"], "recreate"),
}


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def device(size_gib: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="rollback-bench.") as work:
        image = Path(work) / "disk.img"
        with image.open("wb") as handle:
            handle.truncate(size_gib << 30)
        sh("mkfs.btrfs", "-q", str(image))
        dev = sh("losetup", "-f", "--show", str(image))
        try:
            yield dev
        finally:
            sh("losetup", "-d", dev)


@contextmanager
def top(dev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rollback-bench-mnt.") as mnt:
        sh("mount", "-o", "subvolid=5", dev, mnt)
        try:
            yield Path(mnt)
        finally:
            sh("umount", mnt)


def make_template(where: Path, files: int) -> None:
    """A subvolume with `files` empty files, 1000 per directory."""
    btrfsutil.create_subvolume(str(where))
    for number in range(files):
        directory = where / f"d{number // 1000}"
        if number % 1000 == 0:
            directory.mkdir()
        (directory / f"f{number}").touch()


def prepare(dev: str, files: int, nested: int, mode: str) -> None:
    """The same starting layout for every timed command."""
    with top(dev) as t:
        trash = t / ".rollback" / "trash"  # what an after-boot run left: its cleanup ran (not measured here)
        archive = t / "old_roots"  # what keep mode left: only keep mode's layout has archived roots
        for holder in (trash, archive):
            for name in os.listdir(holder) if holder.exists() else []:
                btrfsutil.delete_subvolume(str(holder / name), recursive=True)
        if (t / "root").exists():  # what the last command made: gone before the wait, not after it
            btrfsutil.delete_subvolume(str(t / "root"), recursive=True)
        btrfsutil.sync(str(t))
        subprocess.run(["btrfs", "subvolume", "sync", str(t)], check=True, capture_output=True)  # cleaner done
        template = t / f"template-{files}"
        if not template.exists():
            make_template(template, files)
        if not (t / "root-blank").exists():
            btrfsutil.create_subvolume(str(t / "root-blank"))
            btrfsutil.set_subvolume_read_only(str(t / "root-blank"))
        btrfsutil.create_snapshot(str(template), str(t / "root"))
        # half at depth 1, half inside those (depth 2)
        made = [f"root/n{number}" if number % 2 == 0 else f"root/n{number - 1}/n{number}" for number in range(nested)]
        if mode == "keep":
            archive.mkdir(exist_ok=True)
            made.append("old_roots/20200101T000000Z")  # one to prune
        for path in made:
            btrfsutil.create_subvolume(str(t / path))
        btrfsutil.sync(str(t))
        if btrfsutil.deleted_subvolumes(str(t)):  # the project would wait for the cleaner (Reclaim), not the baseline
            raise RuntimeError("bench: a deleted subvolume is still being cleaned before the timed command")
        listed = {os.fsdecode(path) for path, _ in btrfsutil.SubvolumeIterator(str(t))}
        left = sorted(listed - {"root", "root-blank", *made} - {p for p in listed if p.startswith("template-")})
        if left:  # a previous row's state would be measured with this row
            raise RuntimeError(f"bench: the layout holds subvolumes no row made: {left[:3]}")


def drop_device_cache(dev: str) -> None:
    """Forget the image's pages (loop device and backing file) but nothing else: at boot the disk
    is cold while the initramfs (interpreter, btrfs-progs, shell) is in memory."""
    sh("blockdev", "--flushbufs", dev)
    backing = Path(f"/sys/block/{Path(dev).name}/loop/backing_file").read_text().strip()
    fd = os.open(backing, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def private_journal() -> None:
    """The initrd has journald, so the project logs through pystemd, as there: to a stand-in socket
    at journald's path that takes (and discards) the entries. It lives in this process's own mount
    namespace (a tmpfs over /run/systemd), so the host's journal, if it has one, never sees the
    benchmark, and the figures do not depend on whether it has one. Call before any thread starts."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise SystemExit(f"bench: cannot unshare the mount namespace: {os.strerror(ctypes.get_errno())}")
    sh("mount", "--make-rprivate", "/")
    Path("/run/systemd").mkdir(exist_ok=True)
    sh("mount", "-t", "tmpfs", "tmpfs", "/run/systemd")
    Path("/run/systemd/journal").mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("/run/systemd/journal/socket")

    def drain() -> None:
        while True:
            server.recv(1 << 20)

    threading.Thread(target=drain, daemon=True).start()
    os.environ["ROLLBACK_LOG_TARGET"] = "journal"  # the project's commands log as the unit does
    initrd_mark()


def initrd_mark() -> None:
    """systemd's mark of an initrd, /etc/initrd-release, in the same private namespace (an overlay over
    /etc whose upper layer lives and dies with the namespace's tmpfs): the project then deletes at boot
    as it does there (libbtrfsutil's recursive delete; elsewhere its checked walk) and reads rd.
    options, and the host's /etc is never written."""
    layers = Path("/run/systemd/initrd-etc")
    (layers / "upper").mkdir(parents=True)
    (layers / "work").mkdir()
    options = f"lowerdir=/etc,upperdir={layers / 'upper'},workdir={layers / 'work'}"
    sh("mount", "-t", "overlay", "overlay", "-o", options, "/etc")
    INITRD_RELEASE.write_text(_MARK)


@contextmanager
def running_system() -> Iterator[None]:
    """Without the initrd's mark for a while: `rollback cleanup` runs on the booted system."""
    INITRD_RELEASE.unlink()
    try:
        yield
    finally:
        INITRD_RELEASE.write_text(_MARK)


def timed(argv: list[str]) -> float:
    began = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(argv)}\n{result.stderr}")
    return elapsed


def run_measured(argv: list[str]) -> tuple[float, int]:
    """Wall time (s) and the child's peak RSS (KiB), from wait4's resource usage."""
    began = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"load command failed: {' '.join(argv)}")
    return elapsed, usage.ru_maxrss


def load(files_list: list[int], nested: int, archived: int, *, cleanup: bool = False) -> list[dict[str, object]]:
    """keep mode on a big root with `archived` old roots to prune: time and peak RSS per file count. With
    `cleanup`, the run defers deletion (cleanup = after-boot) and `rollback cleanup` is what is measured."""
    rows: list[dict[str, object]] = []
    size = 8 if max(files_list) >= 1_000_000 else 2
    with device(size) as dev:
        for files in files_list:
            prepare(dev, files, nested, "keep")
            with top(dev) as t:
                for number in range(archived - 1):  # prepare() made one; each old root holds a subvolume
                    old = t / "old_roots" / f"2019{1 + number // 28:02d}{1 + number % 28:02d}T000000Z"
                    btrfsutil.create_subvolume(str(old))
                    btrfsutil.create_subvolume(str(old / "nested"))
            argv = rollback_argv(
                "run", "--archive", "old_roots", "--keep-days", "30", "--keep-min", "0", device=dev, launcher=ROLLBACK
            )
            if cleanup:
                timed([*argv, "--cleanup", "after-boot"])
                argv = rollback_argv("cleanup", device=dev, launcher=ROLLBACK)
            with running_system() if cleanup else nullcontext():
                seconds, rss = run_measured(argv)
            with top(dev) as t:
                left = sorted(os.listdir(t / "old_roots"))
            assert len(left) == 1, left  # all old roots pruned, the new one archived
            if cleanup:
                with top(dev) as t:
                    assert not os.listdir(t / ".rollback/trash"), "the cleanup left the trash"
            row: dict[str, object] = {
                "what": "cleanup" if cleanup else "run",
                "files": files,
                "nested": nested,
                "archived": archived,
                "ms": round(seconds * 1000, 1),
                "peak_rss_kib": rss,
            }
            print(
                f"load ({row['what']}): {files:>9} files, {nested} nested, {archived} archived roots pruned: "
                f"{row['ms']} ms, peak RSS {rss} KiB",
                flush=True,
            )
            rows.append(row)
    return rows


def host(files_list: list[int], nested_list: list[int], modes: list[str], reps: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    size = 8 if max(files_list) >= 1_000_000 else 2
    with device(size) as dev:
        for files in files_list:
            for nested in nested_list:
                for mode in modes:
                    for cache in ("cold", "warm") if mode == "recreate" else ("cold",):
                        rows.append(compare(dev, files, nested, mode, cache, reps))
    return rows


def compare(dev: str, files: int, nested: int, mode: str, cache: str, reps: int) -> dict[str, object]:
    """The commands in every order in turn from the same layout, `reps` times each (after-boot rows:
    every order at least twice): the project and the baseline, and in after-boot rows the floor (the
    same changes with no checks)."""
    flags, base_mode = MODES[mode]
    commands = {
        "project": rollback_argv("run", *flags, device=dev, launcher=ROLLBACK),
        "baseline": ["sh", str(BASELINE), dev, base_mode],
    }
    if mode == "after-boot":
        commands["floor"] = ["sh", str(FLOOR_AFTER_BOOT), dev]
    times: dict[str, list[float]] = {who: [] for who in commands}
    # every order of the commands in turn, so each follows each other as often (the one right after
    # the baseline's heavy deletes at 1000 nested ran slower); after-boot rows, whose growth with
    # nested subvolumes is a target, repeat every order twice
    orders = list(itertools.permutations(commands))
    for rep in range(max(reps, 2 * len(orders)) if mode == "after-boot" else reps):
        for who in orders[rep % len(orders)]:
            prepare(dev, files, nested, mode)
            if cache == "cold":
                drop_device_cache(dev)
            times[who].append(timed(commands[who]))
    row = {**summarize(files, nested, mode, times), "cache": cache}
    print(
        f"{files:>9} files {nested:>5} nested {mode:<9} {cache} project {row['project_ms']:>7.1f} ms  "
        f"baseline {row['baseline_ms']:>7.1f} ms  ratio {row['ratio']:.2f}"
        + (f"  floor {row['floor_ms']:>7.1f} ms" if "floor_ms" in row else ""),
        flush=True,
    )
    return row


def summarize(files: int, nested: int, mode: str, times: dict[str, list[float]]) -> dict[str, object]:
    ms = {who: [t * 1000 for t in values] for who, values in times.items()}
    row: dict[str, object] = {"files": files, "nested": nested, "mode": mode}
    for who, values in ms.items():  # project, baseline (and floor)
        row[f"{who}_ms"] = round(statistics.median(values), 1)
        row[f"{who}_range"] = [round(min(values), 1), round(max(values), 1)]
    row["ratio"] = round(statistics.median(ms["project"]) / statistics.median(ms["baseline"]), 2)
    return row


def import_cost(reps: int) -> dict[str, object]:
    """The boot path's imports, deferred (as shipped) and eager (every deferred module imported at once), same run."""
    code = (
        "import rollback.entry, rollback.cli, rollback.verbs, rollback.log, rollback.effects.btrfs,"
        " rollback.effects.mount, rollback.effects.device;"
        " rollback.log.configure(journal=True, notify=True, console=False); rollback.log.emit('started', 'import cost')"
    )
    results: dict[str, Any] = {}
    for label, env in (("deferred", {}), ("eager", {"ROLLBACK_EAGER_IMPORTS": "1"})):
        totals, breakdown = [], {}
        for _ in range(reps):
            argv = [*ROLLBACK[:3], "-X", "importtime", "-c", _ON_PATH + code]
            result = subprocess.run(
                argv, capture_output=True, text=True, env={**os.environ, **env, "NOTIFY_SOCKET": ""}
            )
            tops = {}
            for line in result.stderr.splitlines():
                parts = line.split("|")
                if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
                    tops[parts[2].strip()] = int(parts[1]) / 1000
            totals.append(sum(tops.values()))
            breakdown = dict(sorted(tops.items(), key=lambda kv: -kv[1])[:8])
        summary = {
            "total_ms": round(statistics.median(totals), 1),
            "top": {k: round(v, 1) for k, v in breakdown.items()},
        }
        results[label] = summary
        print(f"imports ({label}): {summary['total_ms']} ms; top: {summary['top']}", flush=True)
    return results


def chart(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    files = max(int(str(r["files"])) for r in rows)
    for who, style in (("project", "o-"), ("baseline", "s--")):
        points = sorted(
            (int(str(r["nested"])), float(str(r[f"{who}_ms"])))
            for r in rows
            if r["mode"] == "recreate" and r["files"] == files and r["cache"] == "cold"
        )
        axes.plot([p[0] for p in points], [p[1] for p in points], style, label=who)
    axes.set_xscale("symlog", linthresh=10)
    axes.set_xlabel("nested subvolumes in root")
    axes.set_ylabel("end-to-end time, median (ms)")
    axes.set_title(f"rollback vs shell baseline, recreate, {files:,} files, cold device")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=100)


def _row(results: dict[str, Any], files: int, nested: int, mode: str = "recreate", cache: str = "cold") -> Any:
    found = [
        r for r in results["host"] if (r["files"], r["nested"], r["mode"], r["cache"]) == (files, nested, mode, cache)
    ]
    return found[0] if found else None


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The issue's targets, each with what this run measured and whether it is met."""
    rows: list[tuple[str, str, bool]] = []
    if row := _row(results, 100_000, 100):
        rows.append(("host, 100k files / 100 nested: <= 1.0x", f"{row['ratio']}x", row["ratio"] <= 1.0))
    for files in (1000, 100_000, 1_000_000):
        if row := _row(results, files, 1000):
            rows.append((f"host, {files:,} files / 1000 nested: <= 0.8x", f"{row['ratio']}x", row["ratio"] <= 0.8))
    for nested in (0, 10, 100, 1000):
        small, big = _row(results, 1000, nested), _row(results, 1_000_000, nested)
        if small and big:
            change = big["project_ms"] / small["project_ms"] - 1
            rows.append(
                (f"flat in file count, {nested} nested: 1k vs 1M within 20%", f"{change:+.0%}", abs(change) <= 0.2)
            )
    # "Off the critical path": the project deleting after boot (recreate mode) against the script
    if row := _row(results, 100_000, 100, "after-boot"):
        rows.append(("host after-boot, 100k files / 100 nested: <= 1.5x", f"{row['ratio']}x", row["ratio"] <= 1.5))
    if row := _row(results, 100_000, 1000, "after-boot"):
        rows.append(("host after-boot, 100k files / 1000 nested: <= 0.4x", f"{row['ratio']}x", row["ratio"] <= 0.4))
    none, many = _row(results, 100_000, 0, "after-boot"), _row(results, 100_000, 1000, "after-boot")
    if none and many:
        growth = many["project_ms"] / none["project_ms"]
        shown = f"{growth:.2f}x (+{many['project_ms'] - none['project_ms']:.1f} ms)"
        if "floor_ms" in none and "floor_ms" in many:  # what the filesystem's own work grows by, same run
            floor = many["floor_ms"] / none["floor_ms"]
            shown += f"; floor {floor:.2f}x (+{many['floor_ms'] - none['floor_ms']:.1f} ms)"
        rows.append(("host after-boot, 100k files: 1000 nested within 15% of 0", shown, growth <= 1.15))
    if vm := results.get("vm"):
        rows.append(("VM: rollback unit <= 1.0x the baseline's", f"{vm['ratio']}x", vm["ratio"] <= 1.0))
        added = vm["added_bytes"]["project"] - vm["added_bytes"]["baseline"]
        rows.append(("initramfs growth over the baseline's <= 3 MB zstd", f"{added / 1e6:.2f} MB", added <= 3e6))
    return rows


def markdown(results: dict[str, Any]) -> str:
    """docs/benchmarks.md: method, machine, and every figure of this run."""
    machine = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `sudo .venv/bin/python -m bench.run --vm` (bench/run.py); every figure below comes from",
        "one run of that command, on the machine described. Nothing here is asserted by a test; CI runs",
        "`--quick` so the benchmark cannot rot.",
        "",
        "## Method",
        "",
        "- Baseline: `bench/baseline.sh`, a seed-equivalent shell rollback with btrfs-progs (one",
        "  `btrfs subvolume list`, nested subvolumes deleted deepest-first, then the root, in one call;",
        "  btrfs-progs 6.2 has no `delete -R`). Never shipped.",
        "- Project: `rollback run`, started the way the initramfs starts it (`python -I -S`), logging to",
        "  journald as in the initrd (a stand-in socket at journald's path, in the benchmark's own mount",
        "  namespace, takes the entries; the host's journal never sees them), and with systemd's mark of",
        "  an initrd (`/etc/initrd-release`, on an overlay in that namespace), so it deletes at boot as there.",
        "- Host: one loop-device image. Before every timed command the layout is rebuilt identically (a",
        "  writable snapshot of a template holding the files, then the nested subvolumes, half at depth 1",
        "  and half at depth 2) and the kernel cleaner is waited for. The commands run in every order in",
        f"  turn, {results['reps']} times each (`after-boot` rows, with the floor as a third command: 12 times,",
        "  each of the 6 orders twice); figures are medians (min-max) of wall-clock time for the whole",
        "  command: interpreter or shell start, mount, work, umount. Ratio = project median / baseline",
        "  median, same run.",
        "- Device cache: `cold` (every mode) drops the image's pages (loop device buffers and the backing",
        "  file) before each command, as at boot, when nothing of the disk has been read yet; programs",
        "  stay cached, as in an initramfs. `warm` (recreate only) leaves the pages the layout set-up",
        "  just wrote in memory, which favours the baseline's repeated tree walks.",
        "- `keep` mode archives the root and prunes one 6-year-old archived root each run.",
        "- VM: both variants in the same dracut initramfs setup under qemu TCG; the unit's duration is",
        "  systemd's ExecMainStart to ExecMainExit timestamps, from a fresh copy of the same image per boot.",
        "",
        "## Machine",
        "",
        f"Linux {machine['kernel']}, {machine['cpus']} CPUs, Python {machine['python']}, {machine['btrfs-progs']}.",
        "",
        "## Targets (recreate, cold device; ratios are project/baseline from this run)",
        "",
        "The `host` rows without `after-boot` are the first issues' targets, deleting at boot; the `after-boot`",
        'rows, the VM unit and the initramfs are "Off the critical path" (its VM critical-path targets:',
        "bench/critical_path.py, docs/boot-path.md).",
        "",
        "| target | measured | met |",
        "|---|---:|---|",
        *(f"| {name} | {value} | {'yes' if met else '**no**'} |" for name, value, met in targets(results)),
        "",
        "## Boot-path imports (ms, median)",
        "",
        "| | total | largest |",
        "|---|---|---|",
    ]
    for label, found in results["imports"].items():
        top = ", ".join(f"{name} {ms}" for name, ms in list(found["top"].items())[:4])
        lines.append(f"| {label} | {found['total_ms']} | {top} |")
    lines += [
        "",
        "`deferred` is as shipped (rollback/lazy.py); `eager` is the same code with",
        "`ROLLBACK_EAGER_IMPORTS=1`: every deferred module (structlog's and pystemd's package inits,",
        "asyncio, inspect, uuid, shlex, ipaddress) imported at once. Both: python -I -S -X importtime,",
        "the boot path's modules, journal logging configured; see docs/boot-path.md for the breakdown.",
        "",
        "## Host, end to end (ms)",
        "",
        "| files | nested | mode | device | project | baseline | ratio |",
        "|---:|---:|---|---|---|---|---:|",
    ]
    for r in results["host"]:
        p, b = r["project_range"], r["baseline_range"]
        lines.append(
            f"| {r['files']:,} | {r['nested']} | {r['mode']} | {r['cache']} | {r['project_ms']} ({p[0]}-{p[1]}) "
            f"| {r['baseline_ms']} ({b[0]}-{b[1]}) | {r['ratio']} |"
        )
    floors = [r for r in results["host"] if "floor_ms" in r]
    if floors:
        lines += [
            "",
            "### The floor of an after-boot run",
            "",
            "`bench/floor_after_boot.sh`, timed in turn with the two above from the same layouts: the",
            "changes an after-boot run makes (rename the root into the trash, create a new one, commit) in a",
            "shell, with no checks and no interpreter. Its growth with nested subvolumes is the filesystem's",
            "own (mount, rename, create, commit, umount of a filesystem with more subvolumes); the",
            "project's growth beyond it is what its checks read.",
            "",
            "| files | nested | project | floor | project - floor |",
            "|---:|---:|---|---|---:|",
        ]
        for r in floors:
            p, f = r["project_range"], r["floor_range"]
            lines.append(
                f"| {r['files']:,} | {r['nested']} | {r['project_ms']} ({p[0]}-{p[1]}) "
                f"| {r['floor_ms']} ({f[0]}-{f[1]}) | {r['project_ms'] - r['floor_ms']:.1f} |"
            )
    lines += [
        "",
        "![time against nested subvolumes](benchmark-chart.png)",
        "",
        "## Load (keep mode: archive the root, prune every old root)",
        "",
        "| files | nested | archived roots pruned | time (ms) | peak RSS (KiB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in results.get("load", []):
        lines.append(f"| {r['files']:,} | {r['nested']} | {r['archived']} | {r['ms']} | {r['peak_rss_kib']} |")
    lines += [
        "",
        "Peak RSS is the rollback process's own (wait4); it does not walk the files, so it",
        "does not grow with their number.",
        "",
    ]
    if "vm" in results:
        vm = results["vm"]
        lines += [
            "## In the VM (qemu TCG)",
            "",
            "| | unit duration, median (min-max) | initramfs added (bytes) |",
            "|---|---|---:|",
        ]
        for who in ("project", "baseline", "floor"):
            added = f"{vm['added_bytes'][who]:,}" if who in vm["added_bytes"] else "(project's)"
            lines.append(
                f"| {who} | {vm[who]['median_s']} s ({vm[who]['range_s'][0]}-{vm[who]['range_s'][1]}), "
                f"{vm[who]['boots']} boots | {added} |"
            )
        lines += [
            "",
            f"Ratio project/baseline: {vm['ratio']}. `floor` is bench/floor.py run by the same unit from",
            "the project's initramfs: the interpreter, btrfsutil and mount(2) through ctypes, with no",
            "settings, checks, logging or journal: what the interpreter itself costs in this setup.",
            f"Ratio floor/baseline: {vm['floor_ratio']}.",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (CI)")
    parser.add_argument("--reps", type=int, default=0, help="repetitions per command (default 5, quick 2)")
    parser.add_argument("--vm", action="store_true", help="also boot both variants under qemu")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where results go")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench: run as root (loop devices, mounts)", file=sys.stderr)
        return 2
    private_journal()
    reps = args.reps or (2 if args.quick else 5)
    files_list, nested_list = ([1000], [0, 10]) if args.quick else ([1000, 100_000, 1_000_000], [0, 10, 100, 1000])
    modes = ["recreate", "after-boot"] if args.quick else list(MODES)  # quick: the floor runs too
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {
            "kernel": platform.release(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "btrfs-progs": sh("btrfs", "--version"),
            # what the project's commands saw: the initrd's mark (initrd_mark), as at boot
            "project in initrd": sh(
                *ROLLBACK[:-1], _ON_PATH + "from rollback.sources import in_initrd; print(in_initrd())"
            )
            == "True",
        },
        "reps": reps,
        "imports": import_cost(reps),
        "host": host(files_list, nested_list, modes, reps),
        "load": load(
            [1000, 10_000] if args.quick else [1000, 1_000_000], 10 if args.quick else 1000, 5 if args.quick else 100
        ),
    }
    if args.vm:
        from bench.vm import vm_results

        results["vm"] = vm_results(3 if not args.quick else 1)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results["host"], args.out / "benchmark-chart.png")
    if not args.quick:
        (args.out / "benchmarks.md").write_text(markdown(results))
    print(f"wrote {args.out}/benchmarks.json, benchmark-chart.png" + ("" if args.quick else ", benchmarks.md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
