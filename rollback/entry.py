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
    _in_utf8_mode()
    try:
        from rollback.cli import run
    except KeyboardInterrupt:  # Ctrl-C while the program's own modules load: as cli.run says it later
        import os
        import sys

        sys.stderr.write(INTERRUPTED)
        sys.stderr.flush()
        os._exit(1)  # Exit.FAILED, whose module may be the one that was loading
    run()


INTERRUPTED = "rollback: interrupted (SIGINT, Ctrl-C) before it began: nothing was changed\n"


def _in_utf8_mode() -> None:
    """Names on disk are bytes, which Python decodes in the locale's encoding: under a locale that is
    not UTF-8 (LANG=tr_TR.ISO-8859-9; C with UTF-8 mode off), `diff --json` printed UTF-8 names as
    mojibake and an undecodable byte as a character it is not. Start again in Python's UTF-8 mode,
    with the same arguments (a C locale gets it without this: the initrd's)."""
    import os
    import sys

    if sys.flags.utf8_mode or sys.getfilesystemencoding() == "utf-8":
        return
    os.execv(sys.executable, [sys.executable, "-X", "utf8", *sys.orig_argv[1:]])
