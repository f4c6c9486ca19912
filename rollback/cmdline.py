"""The kernel command line's words: pure, shared by the settings layer and the hibernation check."""

from __future__ import annotations

_SPACE = " \t\n\r"  # systemd's (proc_cmdline's WHITESPACE): not U+00A0 or U+2003, which str.isspace counts


def split_cmdline(text: str) -> list[str]:
    """Split as systemd does: spaces, tabs and line ends separate; double quotes group and vanish."""
    words: list[str] = []
    current: list[str] = []
    quoted = started = False
    for char in text:
        if char == '"':
            quoted, started = not quoted, True
        elif char in _SPACE and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(char)
            started = True
    if started:
        words.append("".join(current))
    return words
