"""The dracut module's shell helpers, run with dracut's install functions stubbed out."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

from tests.support.environment import unavailable

MODULE_SETUP = Path(__file__).parents[2] / "packaging" / "dracut" / "90rollback" / "module-setup.sh"


def installed_for(extension: str) -> list[str]:
    """What _rollback_inst_extension asks dracut to install for one C extension."""
    script = f'inst() {{ echo "$1"; }}\n. "{MODULE_SETUP}"\n_rollback_inst_extension "$1"\n'
    result = subprocess.run(["bash", "-c", script, "bash", extension], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_an_extension_brings_the_libraries_it_links_even_when_not_executable() -> None:
    """Debian ships lib-dynload modules 0644, and dracut-install resolves dependencies only for
    executable files: the initramfs booted without libffi until the module resolved them itself."""
    found = glob.glob("/usr/lib/python3*/lib-dynload/_ctypes.cpython-*.so")
    if not found:
        unavailable("no Debian python3 _ctypes module here (Debian 12 always has one)")
    extension = found[0]
    assert not os.stat(extension).st_mode & 0o111  # the case dracut-install leaves alone
    installed = installed_for(extension)
    assert installed[0] == extension
    assert any(Path(lib).name.startswith("libffi.so") for lib in installed[1:]), installed
