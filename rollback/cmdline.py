"""The kernel command line's words: pure, shared by the settings layer and the hibernation check."""

from __future__ import annotations


def split_cmdline(text: str) -> list[str]:
    """Split like the kernel does: whitespace separates, double quotes group and vanish."""
    words: list[str] = []
    current: list[str] = []
    quoted = started = False
    for char in text:
        if char == '"':
            quoted, started = not quoted, True
        elif char.isspace() and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(char)
            started = True
    if started:
        words.append("".join(current))
    return words
