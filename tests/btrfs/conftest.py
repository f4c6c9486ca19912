"""Fixtures of the real-btrfs tier (root only); the helpers are in tests/support/disks.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.disks import Disk, single_disk

pytestmark = pytest.mark.btrfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    with single_disk(tmp_path, 512 * 1024 * 1024) as found:
        yield found
