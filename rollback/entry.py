"""The program's entry point: the console script, `python -m rollback` and the initramfs launchers.

Importing it defers what the libraries import but the boot path never runs (rollback/lazy.py), before
anything imports those modules; that is its only side effect, so importing any other module of the
package (tests, the benchmark) leaves sys.modules as it finds it.
"""

from __future__ import annotations

from typing import NoReturn

from rollback import lazy

lazy.defer(*lazy.BOOT_UNUSED)


def main() -> NoReturn:
    from rollback.cli import run

    run()
