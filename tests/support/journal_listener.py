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


def run_as_a_service(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `argv` with stderr connected to "the journal" as systemd does it: $JOURNAL_STREAM names stderr.

    journald hands a service a stream socket and sets JOURNAL_STREAM to its `<dev>:<ino>`; a pipe
    stands in for the stream here (what is written to it is returned as stderr). Callers may set
    JOURNAL_STREAM themselves (e.g. to a stale value) and it is kept.
    """
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", **os.environ}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=write_end, env=env, text=True) as process:
        os.close(write_end)
        with os.fdopen(read_end, encoding="utf-8", errors="replace") as stream:
            stderr = stream.read()
        stdout = process.stdout.read() if process.stdout else ""
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def main() -> int:
    os.makedirs("/run/systemd", exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
    os.makedirs("/run/systemd/journal")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("/run/systemd/journal/socket")
        if sys.argv[1] == "--piped":  # a manual run: `rollback ... 2>&1 | tee log`
            result = subprocess.run(sys.argv[2:], capture_output=True, text=True)
        else:
            result = run_as_a_service(sys.argv[1:])
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
