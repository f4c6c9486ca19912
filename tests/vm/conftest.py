"""The VM tier: dracut-built initramfs images booted under qemu (root; fails instead of skipping in CI)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.support import trixie
from tests.support import vm as harness
from tests.support.environment import unavailable
from tests.support.vm_session import PLATFORMS, Vm

pytestmark = pytest.mark.vm


@pytest.fixture(scope="session", params=PLATFORMS[:1])  # one instance per platform, whoever asks
def vm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    """The host's own Debian 12 (the default), or another platform's userland for the tests that ask."""
    platform = request.param
    if os.geteuid() != 0:
        unavailable("VM tests need root (loop devices to build images)")
    missing = harness.missing_tools() + (
        [] if platform == "debian12" or shutil.which("debootstrap") else ["debootstrap"]
    )
    if missing:
        unavailable(f"VM tests need {', '.join(missing)} (scripts/setup installs them)")
    session = _debian12(tmp_path_factory) if platform == "debian12" else _trixie(tmp_path_factory)
    yield session
    harness.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sizes = {name: path.stat().st_size for name, path in session.initramfs.items()}
    report = {
        "timings": session.timings,
        "retries": session.retries,
        "initramfs_bytes": sizes,
        "module_sizes": session.sizes,
    }
    suffix = "" if platform == "debian12" else f"-{platform}"
    (harness.ARTIFACTS / f"timings{suffix}.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(session.work, ignore_errors=True)


def _debian12(tmp_path_factory: pytest.TempPathFactory) -> Vm:
    kernel = harness.find_kernel()
    if kernel is None:
        unavailable("no Debian cloud kernel in /boot (linux-image-cloud-amd64)")
        raise AssertionError("unreachable")
    return Vm(kernel, tmp_path_factory.mktemp("vm"))


def _trixie(tmp_path_factory: pytest.TempPathFactory) -> Vm:
    """debootstrap (cached), scripts/install inside, trixie's kernel; its dracut builds each variant."""
    work = tmp_path_factory.mktemp("vm-trixie")
    root = work / "root"
    began = time.monotonic()
    trixie.userland(root)
    made = time.monotonic()
    output = trixie.install(root)
    installed = time.monotonic()
    kernel = trixie.find_kernel(root)
    harness.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    facts = trixie.versions(root)
    facts.update(userland_s=round(made - began, 1), install_s=round(installed - made, 1), kernel=kernel.version)
    (harness.ARTIFACTS / "trixie-install.log").write_text(output)
    (harness.ARTIFACTS / "trixie-platform.json").write_text(json.dumps(facts, indent=2))
    return Vm(
        kernel, work, platform="trixie", builder=lambda variant: trixie.build_initramfs(root, kernel, variant, work)
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"report_{call.when}", report)
    return report


@pytest.fixture(autouse=True)
def _keep_failed_boots(request: pytest.FixtureRequest, vm: Vm) -> Iterator[None]:
    """A failed scenario keeps each boot's facts next to its serial log in test-artifacts/vm/."""
    vm.boots.clear()
    yield
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        for boot in vm.boots:
            harness.keep_artifacts(boot)
