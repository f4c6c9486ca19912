"""The VM tier: dracut-built initramfs images booted under qemu (root; fails instead of skipping in CI)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest

from tests.support import vm as harness
from tests.support.environment import unavailable
from tests.support.vm_session import Vm

pytestmark = pytest.mark.vm


@pytest.fixture(scope="session")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    if os.geteuid() != 0:
        unavailable("VM tests need root (loop devices to build images)")
    missing = harness.missing_tools()
    if missing:
        unavailable(f"VM tests need {', '.join(missing)} (scripts/setup installs them)")
    kernel = harness.find_kernel()
    if kernel is None:
        unavailable("no Debian cloud kernel in /boot (linux-image-cloud-amd64)")
        return
    session = Vm(kernel, tmp_path_factory.mktemp("vm"))
    yield session
    harness.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sizes = {name: path.stat().st_size for name, path in session.initramfs.items()}
    report = {"timings": session.timings, "initramfs_bytes": sizes, "module_sizes": session.sizes}
    (harness.ARTIFACTS / "timings.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(session.work, ignore_errors=True)


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
