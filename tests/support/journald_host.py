"""Run a command as if on a normal install: journald listening, and our output going to the journal.

`unshare --mount --propagation private python -m tests.journald_host COMMAND...`: in its own mount
namespace it puts a tmpfs over /run/systemd, binds a stand-in journal socket at journald's path,
runs COMMAND with stdout and stderr on a stream named by $JOURNAL_STREAM (as systemd runs a service,
e.g. a CI job under systemd-run), and counts every datagram that reaches the socket. It prints the
command's output, then one JSON line {"returncode": ..., "datagrams": ..., "samples": [...]}.
Used by tests/btrfs/test_journald_host.py to prove that the test suite never writes to the journal.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading


def _drain(server: socket.socket, received: list[bytes], stop: threading.Event) -> None:
    server.settimeout(0.2)
    while not stop.is_set():
        try:
            received.append(server.recv(1 << 20))
        except TimeoutError:
            continue


def main() -> int:
    os.makedirs("/run/systemd", exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
    os.makedirs("/run/systemd/journal")
    received: list[bytes] = []
    stop = threading.Event()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("/run/systemd/journal/socket")
        drain = threading.Thread(target=_drain, args=(server, received, stop), daemon=True)
        drain.start()
        read_end, write_end = os.pipe()
        st = os.fstat(write_end)
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        with subprocess.Popen(sys.argv[1:], stdout=write_end, stderr=write_end, env=env) as process:
            os.close(write_end)
            with os.fdopen(read_end, "rb") as stream:
                for chunk in iter(lambda: stream.read(65536), b""):
                    sys.stdout.buffer.write(chunk)
        stop.set()
        drain.join()
    samples = [d[:600].decode(errors="replace") for d in received[:5]]
    sys.stdout.flush()
    print(json.dumps({"returncode": process.returncode, "datagrams": len(received), "samples": samples}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
