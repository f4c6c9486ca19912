"""Command line: verbs, flags from the settings table, and the one exit-code boundary."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, assert_never

from rollback import __version__
from rollback.errors import KIND, MEANING, Exit, RollbackError
from rollback.settings import DEFAULT_CONFIG, DEFAULT_KERNEL_CMDLINE, SETTINGS, Config, Merge, Value, resolve


def _hanging(first: str, text: str, width: int = 88) -> str:
    """`first` then `text` word-wrapped, continuation lines indented to the text (no textwrap on the boot path)."""
    lines, line = [], first
    for word in text.split():
        if len(line) + 1 + len(word) > width and line.strip():
            lines.append(line)
            line = " " * len(first) + word
        else:
            line += ("" if line.endswith(" ") else " ") + word
    return "\n".join([*lines, line])


EXIT_CODES = "\n".join(
    [
        "exit codes (all but 0 log a reason: reason=, ROLLBACK_REASON in the journal):",
        *(_hanging(f"  {int(code):<3} ", text) for code, text in MEANING.items()),
        "",
        "precedence: flags > kernel command line (rollback.KEY=VALUE) > config file > defaults",
    ]
)


def _shown(default: Value) -> str:
    return ",".join(default) if isinstance(default, tuple) else repr(default)


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are exit 2 like every other bad input: with a reason, logged."""

    def error(self, message: str) -> NoReturn:
        from rollback import log

        log.to_stderr(f"{self.format_usage()}{self.prog}: error: {message}\n")  # argparse's, whatever the target
        try:
            target = log.requested_target(None, os.environ)  # --log-target itself may be what failed
        except ValueError:
            target = "console"
        log.configure(target=target)
        log.emit("invalid", f"invalid: {self.prog}: {message}", hint=f"{self.prog} --help", reason="usage", exit=2)
        sys.exit(int(Exit.USAGE))


BEFORE = "before_verb_"  # the dest prefix of a setting's flag given before the verb (merged in load_config)


def _settings_parser(dest_prefix: str = "") -> _Parser:
    # SUPPRESS: an unset flag leaves no attribute, so flags work before or after the verb. Before the
    # verb a setting's flag has a dest of its own: argparse replaces the main parser's attribute with
    # the verb's, which silently dropped `--protect A run --protect B`'s A
    parent = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    group = parent.add_argument_group("settings (also rollback.KEY= on the kernel command line, KEY = in TOML)")
    for s in SETTINGS:
        shown = s.help if s.parser.bare is not None else f"{s.help} (default: {_shown(s.default)})"
        keywords: dict[str, Any] = {**s.parser.cli, **({"choices": s.choices} if s.choices else {})}
        group.add_argument(s.flag, dest=dest_prefix + s.name, metavar=s.metavar or None, help=shown, **keywords)
    for flag, keywords in global_flags():  # one dest before and after the verb, as always
        parent.add_argument(flag, dest=_dest(flag), **keywords)
    return parent


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def global_flags() -> tuple[tuple[str, dict[str, Any]], ...]:
    """The options besides the settings table's (flag, argparse keywords): every one takes a value."""
    from rollback.log import TARGETS

    return (
        ("--config", {"metavar": "FILE", "help": f"TOML config file (default: {DEFAULT_CONFIG} if present)"}),
        (
            "--kernel-cmdline",
            {
                "metavar": "FILE",
                "help": f"where to read rollback.* options and, for a run outside the initrd, the machine's "
                f"mount.usr=/usrhash=/init= (default: {DEFAULT_KERNEL_CMDLINE}, whose boot words a run by hand "
                "ignores: a rescue system's; /dev/null ignores them; the hibernation check reads resume= from "
                "/proc/cmdline as well)",
            },
        ),
        (
            "--log-target",
            {
                "choices": TARGETS,
                "help": "where events go: journal (native protocol), console (stderr), or auto: the journal when "
                "stderr is connected to it ($JOURNAL_STREAM), else the console (default: $ROLLBACK_LOG_TARGET, "
                "$SYSTEMD_LOG_TARGET, auto)",
            },
        ),
    )


def value_flags() -> list[tuple[str, str]]:
    """(flag, dest) of every option that takes a value: the settings table's and the global ones."""
    settings = [(s.flag, s.name) for s in SETTINGS if s.parser.bare is None]
    return settings + [(flag, _dest(flag)) for flag, _ in global_flags()]


def _no_bare_dashes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--subvolume=--` is a usage error. Python 3.11's argparse drops the `--` and stores [] unchecked
    (no type, no choices: the settings met a list, an internal error; --log-target=-- was taken for
    unset), later versions store "--": neither is a value anyone means."""
    for flag, dest in value_flags():
        for found in (getattr(args, dest, None), getattr(args, BEFORE + dest, None)):
            items = found if isinstance(found, list) and found else [found]  # append: one item per use
            if any(item == [] or item == "--" for item in items):
                parser.error(f"argument {flag}: expected one argument, got '--' (a value cannot be '--')")


@dataclass(frozen=True)
class WithSettings:
    """A verb run with the resolved settings and the kernel command line they were read from."""

    call: Callable[[argparse.Namespace, Config, str], Exit]


@dataclass(frozen=True)
class Raw:
    """A verb run before any setting is read (standby: it reads them when triggered)."""

    call: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Verb:
    """One verb: the parser and the dispatch are both built from VERBS, so neither can miss one."""

    name: str
    help: str
    flags: tuple[tuple[str, str], ...]  # (flag, help) of its store_true options, e.g. --json
    handler: WithSettings | Raw


_JSON = ("--json", "machine-readable output")


def _run(args: argparse.Namespace, config: Config, cmdline: str) -> Exit:
    from rollback import verbs
    from rollback.sources import in_initrd

    # no settings of the machine's: outside the initrd, and no config file (a rescue shell's)
    given = getattr(args, "config", None)  # (read as load_config reads it)
    bare = not in_initrd() and given is None and not os.path.lexists(DEFAULT_CONFIG)
    # (--kernel-cmdline given: the machine's, even a copy of this kernel's; else a run by hand's is a rescue system's)
    return verbs.run(config, dry_run=args.dry_run, cmdline=cmdline, bare=bare, given=hasattr(args, "kernel_cmdline"))


def _cleanup(args: argparse.Namespace, config: Config, cmdline: str) -> Exit:
    from rollback import verbs

    return verbs.cleanup(config, dry_run=args.dry_run, cmdline=cmdline)


def _status(args: argparse.Namespace, config: Config, cmdline: str) -> Exit:
    from rollback import verbs

    return verbs.status(config, as_json=args.json, cmdline=cmdline)


def _diff(args: argparse.Namespace, config: Config, cmdline: str) -> Exit:
    from rollback import verbs

    return verbs.diff(config, as_json=args.json, cmdline=cmdline)


def _skip_next(args: argparse.Namespace, config: Config, cmdline: str) -> Exit:
    from rollback import verbs

    return verbs.skip_next(config, cmdline=cmdline)


def _config(args: argparse.Namespace, config: Config, cmdline: str) -> Exit:
    from rollback import verbs

    return verbs.show_config(config, as_json=args.json)


def _standby(args: argparse.Namespace) -> int:
    from rollback.effects import standby

    return standby.serve(args.directory, args.command, main, _STOPPING, die_of)


VERBS = (
    Verb(
        "run",
        "replace the root subvolume (the boot job)",
        (("--dry-run", "print the plan, change nothing"),),
        WithSettings(_run),
    ),
    Verb(
        "cleanup",
        "delete the old roots boots left in the trash (cleanup = after-boot; the running system)",
        (("--dry-run", "print the plan, change nothing"),),
        WithSettings(_cleanup),
    ),
    Verb("status", "show what is on the device", (_JSON,), WithSettings(_status)),
    Verb("diff", "list what the next run would erase", (_JSON,), WithSettings(_diff)),
    Verb("skip-next", "keep the current root at the next boot, once", (), WithSettings(_skip_next)),
    Verb("config", "print the resolved settings and where each came from", (_JSON,), WithSettings(_config)),
    Verb(
        "standby",
        "(the early initrd unit) import now, run COMMAND when units/rollback-trigger says so",
        (),
        Raw(_standby),
    ),
)
BY_VERB = {verb.name: verb for verb in VERBS}


@functools.cache
def build_parser() -> argparse.ArgumentParser:
    """Built once per process: the early process (standby) parses its own command line before the root
    device is ready, and the run's once triggered, with the same parser (built again there, it was ~3 ms
    of CPU on the boot's critical path, which TCG multiplies by ~20; parsing does not change it)."""
    settings = [_settings_parser()]  # built once, copied into every verb (argparse parents)
    parser = _Parser(
        parents=[_settings_parser(BEFORE)],
        prog="rollback",
        description="Give an ephemeral-root machine a clean btrfs root subvolume at every boot.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rollback {__version__}")
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS:
        sub = subparsers.add_parser(
            verb.name,
            help=verb.help,
            parents=[] if isinstance(verb.handler, Raw) else settings,
            epilog=EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for flag, text in verb.flags:
            sub.add_argument(flag, action="store_true", help=text)
        if isinstance(verb.handler, Raw):  # standby DIR COMMAND...: the command is a whole rollback command line
            sub.add_argument("directory", metavar="DIR", help="where the trigger finds this process")
            sub.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="e.g. run --device DEV")
    return parser


def load_config(args: argparse.Namespace) -> tuple[Config, str]:
    """The resolved settings, and the kernel command line they were read from."""
    from rollback.sources import load_config_file, parse_cmdline, read_cmdline

    file_layer, file_name = load_config_file(getattr(args, "config", None), DEFAULT_CONFIG)
    cmdline = read_cmdline(getattr(args, "kernel_cmdline", DEFAULT_KERNEL_CMDLINE))
    cmdline_layer = parse_cmdline(cmdline)
    flags: dict[str, Value] = {}
    for s in SETTINGS:
        given = [v for v in (getattr(args, BEFORE + s.name, None), getattr(args, s.name, None)) if v is not None]
        if given and s.merge is Merge.EXTEND:  # both places add up (protection is never dropped)
            flags[s.name] = s.parser.from_cli([item for value in given for item in value])
        elif given:  # the flag's last occurrence wins, as within each place
            flags[s.name] = s.parser.from_cli(given[-1])
    return resolve(file_layer, cmdline_layer, flags, file_name), cmdline


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _no_bare_dashes(parser, args)
    handler = BY_VERB[args.verb].handler
    match handler:
        case Raw(call):
            return call(args)
        case WithSettings(call):
            return _with_settings(args, call)
        case _:
            assert_never(handler)


def _with_settings(args: argparse.Namespace, call: Callable[[argparse.Namespace, Config, str], Exit]) -> int:
    """Configure logging, resolve the settings, run the verb: the exit-code boundary."""
    from rollback import log

    try:
        target = log.requested_target(getattr(args, "log_target", None), os.environ)
    except ValueError as error:
        log.configure(target="console")
        log.emit(
            "invalid",
            f"invalid: ${log.TARGET_ENV}: {error}",
            hint=f"unset {log.TARGET_ENV} or fix it",
            reason="bad-log-target",
            exit=int(Exit.USAGE),
        )
        return int(Exit.USAGE)
    log.configure(target=target)
    # (one ignored as inherited stays so: `nohup rollback cleanup` outlives its terminal)
    stops = _Stops()
    previous = {n: signal.signal(n, stops) for n in _STOPPING if signal.getsignal(n) is not signal.SIG_IGN}
    try:
        code = int(call(args, *load_config(args)))
        stops.ended = True
        return code
    except BrokenPipeError:  # the reader stopped early (`rollback diff | head`): not an error
        if sys.stdout is not None:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(Exit.OK)
    except KeyboardInterrupt as stop:  # Ctrl-C at a rescue shell, systemd stopping the unit: one line
        return _interrupted(stop)
    except RollbackError as error:
        stops.ended = True
        return _ended_by(error)
    except Exception as error:  # the boundary: anything unexpected is a failure, with its traceback
        stops.ended = True
        return _internal(error)
    finally:
        stops.ended = True
        for number, handler in previous.items():
            signal.signal(number, handler)
        for late in stops.late:  # to the handler put back: the early process's defers it (standby.serve)
            os.kill(os.getpid(), late)


def _interrupted(stop: KeyboardInterrupt) -> int:
    """One line for a verb stopped by a signal; then dies of that signal, as the shell and systemd expect."""
    from rollback import log

    signum = stop.args[0] if stop.args and isinstance(stop.args[0], signal.Signals) else None
    by = f"{signum.name}, sent to stop it" if signum else "SIGINT, Ctrl-C"
    log.emit(
        "failed",
        f"failed: interrupted ({by}) before it ended",
        hint="a verb that only reads changed nothing; one that writes stopped between crash-consistent "
        "steps: rollback status shows where the device stands (a run: the next one finishes the job)",
        reason="interrupted",
        exit=128 + signum if signum else int(Exit.FAILED),  # as the shell and systemd will see it
    )
    if signum:
        die_of(signum)
    return int(Exit.FAILED)


def _ended_by(error: RollbackError) -> int:
    """A refusal, a usage error or a failure the program knows: its line, hint and exit code."""
    from rollback import log
    from rollback.reasons import REASONS

    kind = KIND[error.exit_code]
    hint = error.hint or REASONS[error.code].action  # the reasons table's, where the error has none of its own
    log.emit(kind, f"{kind}: {error.reason}", hint=hint, reason=error.code, exit=int(error.exit_code))
    return int(error.exit_code)


def _internal(error: Exception) -> int:
    """Anything unexpected: a failure, with its traceback."""
    import traceback

    from rollback import log
    from rollback.reasons import REASONS

    log.emit(
        "failed",
        f"internal error: {error!r}",
        hint=REASONS["internal"].action,
        reason="internal",
        exit=int(Exit.FAILED),
        traceback="".join(traceback.format_exception(error)),
    )
    return int(Exit.FAILED)


# what stops a verb but Ctrl-C: systemd stopping the unit (a timeout, a shutdown), a rescue shell's terminal
# gone. Each died without a word; now it says, as Ctrl-C does, that it stopped midway, then dies of it
_STOPPING = (signal.SIGTERM, signal.SIGHUP)


class _Stops:
    """The stop signals' handler around a verb: while it runs, _stopped (one line, then the process dies
    of it); once it has ended (its outcome known, being said), the signal is kept and sent again once
    the handlers are put back: raised there, it lost the verb's exit status, and the early process
    published 1 for a run that had succeeded (a reviewer)."""

    def __init__(self) -> None:
        self.ended = False
        self.late: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        if self.ended:
            self.late.append(signum)
            return
        _stopped(signum, frame)


def _stopped(signum: int, _frame: object) -> NoReturn:
    # a second one (the terminal's, then the shell's SIGHUP; a Ctrl-C) must not cut the line short: the
    # process dies of this one (die_of) once it is said
    for number in (*_STOPPING, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum))


def die_of(signum: signal.Signals) -> None:
    """End as the signal would have: systemd counts a SIGTERM as a clean stop (rollback-cleanup@ at a
    shutdown), and a dead early process makes the trigger run the command itself, as before."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # (closed, a reader gone: the line is what mattered)
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def run() -> NoReturn:
    """The program's entry point: main(), then exit without the interpreter's teardown.

    Tearing down ~150 modules costs ~10 ms on the host (docs/boot-path.md), on every boot, for
    nothing: by then every file is closed, every journal entry sent, the mount namespace and the
    lock go with the process. Only Python's own output buffers need flushing.
    """
    try:
        code = main()
    except KeyboardInterrupt as stop:  # before the exit boundary (the imports, the parser): nothing begun
        if stop.args and isinstance(stop.args[0], signal.Signals):  # (after it: the verb's end, its line said)
            die_of(stop.args[0])
        from rollback.entry import INTERRUPTED
        from rollback.log import to_stderr

        to_stderr(INTERRUPTED)
        code = int(Exit.FAILED)
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with it closed (`>&-`): Python made it None, nothing to flush
            continue
        try:
            stream.flush()
        except BrokenPipeError:  # the reader stopped early: what it wanted, it got
            pass
        except (OSError, ValueError):  # closed, or a full disk behind a redirect: output was lost
            code = code or int(Exit.FAILED)
    os._exit(code)
