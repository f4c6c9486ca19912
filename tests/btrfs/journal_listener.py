"""Run a command with a stand-in journald: a datagram socket at the real journal path.

Used by test_journal.py as `unshare --mount --propagation private python -m ...`: in its own
mount namespace it puts a tmpfs over /run/systemd, binds /run/systemd/journal/socket, runs the
command, and prints every datagram received (the native journal protocol) as JSON lines.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def parse(datagram: bytes) -> dict[str, list[str]]:
    """KEY=VALUE lines; a binary-safe field is KEY\\n<le64 length><bytes>\\n. A key may repeat."""
    fields: dict[str, list[str]] = {}
    rest = datagram
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields.setdefault(key.decode(), []).append(value.decode())
            rest = after
        else:
            size = int.from_bytes(after[:8], "little")
            fields.setdefault(line.decode(), []).append(after[8 : 8 + size].decode())
            rest = after[8 + size + 1 :]
    return fields


def main() -> int:
    os.makedirs("/run/systemd", exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
    os.makedirs("/run/systemd/journal")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("/run/systemd/journal/socket")
        result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
        server.setblocking(False)
        entries = []
        while True:
            try:
                entries.append(parse(server.recv(1 << 20)))
            except BlockingIOError:
                break
    print(json.dumps({"returncode": result.returncode, "stderr": result.stderr, "entries": entries}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
