"""Start-up ahead of the device: the interpreter starts and imports while the initrd still waits for
the root device; the device-ordered unit then only triggers the work (units/rollback-trigger).

Protocol, in DIR (/run/rollback/standby/<instance>): two FIFOs, `go` and `wake`, both held open
read-write by this process (so a trigger's open never blocks, and a FIFO outlives nobody's use),
then `argv` (the command line it will run: the trigger uses it only for exactly its own), then
`pid`, then READY=1 to systemd (the early unit is Type=notify: the device-ordered unit, ordered
after it, starts no sooner). The trigger writes a line to `go`; this process runs the command line
it was given exactly as `rollback` would (settings, checks, lock, all after the trigger, so after
every ordering of the device-ordered unit), then publishes its exit status as the file `status`
(written whole, then renamed: it exists complete or not at all), writes a line to `wake` so the
waiting trigger looks now, and exits with it. The status is a file, not a line read from a pipe
with a timeout: a shell's timed read can lose what it was reading when the timer fires, and a lost
status made the trigger run the command a second time (seen once in 50 power-cut boots).
If this process is missing or dies before the status exists, the trigger runs the command itself:
nothing depends on it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence

from rollback.errors import Exit


def warm() -> None:
    """Import what a run imports (the boot path), so that only the work is left after the trigger."""
    import _socket  # noqa: F401  (the journal's socket is looked at: journal.listening)
    import tomllib  # noqa: F401  (the config file)

    import rollback.effects.btrfs
    import rollback.effects.device
    import rollback.effects.mount
    import rollback.effects.sysroot
    import rollback.hibernation
    import rollback.plan
    import rollback.reasons  # (a refusal's report)
    import rollback.sources
    import rollback.verbs  # noqa: F401
    from rollback.effects import journal

    journal.load()


def serve(
    directory: str,
    argv: Sequence[str],
    run: Callable[[Sequence[str]], int],
    stopping: Sequence[signal.Signals],
    die_of: Callable[[signal.Signals], None],
) -> int:
    """The protocol above: `run` runs the command line; a stop signal (`stopping`) that comes once it
    was triggered is deferred until the status is published, then ended by as `die_of` does."""
    warm()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    status = os.path.join(directory, "status")
    if os.path.lexists(status):
        os.unlink(status)  # an earlier early process's (it died): never this run's outcome
    fds = [_fifo(os.path.join(directory, name)) for name in ("go", "wake")]
    _publish(os.path.join(directory, "argv"), "".join(f"{arg}\0" for arg in argv))  # what it will run
    _publish(os.path.join(directory, "pid"), f"{os.getpid()}\n")
    _ready()
    while not os.read(fds[0], 64):  # a FIFO held read-write never reads EOF; a line means go
        pass
    os.unlink(os.path.join(directory, "pid"))  # triggered once: no later trigger may wait on this pid
    # a stop signal from here waits for the status (dying first, the trigger would run the command again;
    # a status 1 would fail the boot), but while the verb runs: its own handler stops it between steps
    late: list[signal.Signals] = []
    for number in stopping:
        signal.signal(number, lambda signum, _frame: late.append(signal.Signals(signum)))
    code = int(Exit.FAILED)  # whatever ends the run (an exception, a SystemExit), a status is published:
    try:  # without one the trigger would run the command again (a second rollback in one boot)
        code = run(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(Exit.USAGE)
    finally:
        _publish(status, f"{code}\n")
        os.write(fds[1], b"\n")  # the trigger sleeps in a timed read of `wake`: it looks at once
    if late:  # then ends as the signal would have
        die_of(late[0])
    return code


def _fifo(path: str) -> int:
    if os.path.lexists(path):
        os.unlink(path)  # one from an earlier early process (died), never shared: /run is per boot
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def _publish(path: str, text: str) -> None:
    with open(path + ".new", "w", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(text)
    os.replace(path + ".new", path)


def _ready() -> None:
    if os.environ.get("NOTIFY_SOCKET"):
        import pystemd.daemon

        pystemd.daemon.notify(False, "READY=1")
