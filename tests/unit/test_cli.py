"""The CLI boundary: help, usage errors, and `config` (no root, no device)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from rollback.cli import main
from rollback.effects import device as device_effects
from rollback.errors import Exit, Refused
from tests.support.cli import rollback_argv

ROOT = Path(__file__).parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_documents_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "run", "--help")
    assert code == 0
    for exit_code in Exit:
        assert f"  {int(exit_code)} " in out


def test_unknown_verb_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "explode")[0] == Exit.USAGE


def test_config_shows_resolved_settings_with_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rollback.toml").write_text('device = "/dev/vdb"\nmode = "snapshot"\n')
    (tmp_path / "cmdline").write_text("quiet rollback.mode=recreate rollback.archive=old\n")
    code, out, _ = run(
        capsys,
        "config",
        "--json",
        "--config",
        str(tmp_path / "rollback.toml"),
        "--kernel-cmdline",
        str(tmp_path / "cmdline"),
        "--keep-count",
        "4",
    )
    assert code == 0
    shown = json.loads(out)
    assert shown["settings"]["device"] == "/dev/vdb" and shown["settings"]["mode"] == "recreate"
    assert shown["sources"]["mode"] == "kernel command line" and shown["sources"]["keep-count"] == "flag"
    assert shown["sources"].keys() == shown["settings"].keys()  # one spelling of each key (was keep_count)


def test_config_text_keeps_its_columns(capsys: pytest.CaptureFixture[str]) -> None:
    """Every value starts in one column, the longest key's (ignore-hibernation broke it)."""
    code, out, _ = run(capsys, "config", "--kernel-cmdline", "/dev/null", "--device", "/dev/vdb")
    lines = out.splitlines()
    assert code == 0 and any(line.startswith("ignore-hibernation ") for line in lines)
    width = len("ignore-hibernation")
    assert all((line[width] == " " and line[width + 1] != " ") or "archive" in line for line in lines), out
    assert len({line.rindex(" (") for line in lines}) == 1, out  # and the sources in one column


def test_flags_work_before_the_verb(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--device", "/dev/vdc", "config", "--kernel-cmdline", "/dev/null", "--json")
    assert code == 0 and json.loads(out)["settings"]["device"] == "/dev/vdc"


@pytest.mark.parametrize(
    ("before", "after", "protect", "device"),
    [
        (["--protect", "srv"], ["--protect", "data"], ["persist", "nix", "home", "srv", "data"], None),
        (["--protect", "srv", "--protect", "var"], [], ["persist", "nix", "home", "srv", "var"], None),
        ([], ["--protect", "data"], ["persist", "nix", "home", "data"], None),
        (["--device", "/dev/vdb"], ["--device", "/dev/vdc"], ["persist", "nix", "home"], "/dev/vdc"),
        (["--device", "/dev/vdb", "--protect", "srv"], [], ["persist", "nix", "home", "srv"], "/dev/vdb"),
    ],
)
def test_a_setting_given_before_and_after_the_verb(
    capsys: pytest.CaptureFixture[str], before: list[str], after: list[str], protect: list[str], device: str | None
) -> None:
    """Protection given on both sides adds up (it was dropped from before the verb); another setting's
    last occurrence wins, as on one side."""
    argv = [*before, "config", "--kernel-cmdline", "/dev/null", "--json", *after]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    settings = json.loads(out)["settings"]
    assert settings["protect"] == protect and settings["device"] == device


@pytest.mark.parametrize("spelling", ["a,b", "a,,b", "a,b,", ",a,b", "a", "a,a,b"])
def test_a_list_flag_reads_as_the_kernel_command_line_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, spelling: str
) -> None:
    """`--protect a,b` was one invalid name (exit 2) while `rollback.protect=a,b` was two: one rule."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"rollback.protect={spelling}\n")
    _, from_cmdline, _ = run(capsys, "config", "--kernel-cmdline", str(cmdline), "--json")
    code, from_flag, err = run(capsys, "config", "--kernel-cmdline", "/dev/null", "--json", "--protect", spelling)
    assert code == 0, err
    assert json.loads(from_flag)["settings"]["protect"] == json.loads(from_cmdline)["settings"]["protect"]
    assert json.loads(from_flag)["settings"]["protect"][3:] == list(dict.fromkeys(n for n in spelling.split(",") if n))


@pytest.mark.parametrize(
    "argv",
    [
        ("run", "--kernel-cmdline", "/dev/null"),  # no device
        ("run", "--kernel-cmdline", "/dev/null", "--device", "/dev/x", "--subvolume", "../etc"),
        ("run", "--kernel-cmdline", "/dev/null", "--device", "/dev/x", "--keep-days", "3"),
        ("run", "--kernel-cmdline", "/dev/null", "--device", "/dev/x", "--config", "/nonexistent.toml"),
    ],
)
def test_config_errors_exit_2_with_a_reason(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == Exit.USAGE
    assert "invalid:" in err and "hint=" in err


@pytest.mark.parametrize("verb", ["run", "status", "cleanup"])
@pytest.mark.parametrize(
    ("where", "text", "reason"),
    [
        ("config", 'device = "/dev/loop0\\u0000"\n', "bad-name"),
        ("config", 'device = "LABEL=a\\u0000b"\n', "bad-name"),
        ("cmdline", "quiet rollback.device=/dev/loop0\0x\n", "bad-encoding"),
        ("cmdline", "resume=/dev/vda2\0 quiet\n", "bad-encoding"),
    ],
)
def test_a_nul_byte_in_a_setting_is_exit_2_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str, where: str, text: str, reason: str
) -> None:
    """It was ValueError('embedded null byte') when opening the device: exit 1, internal, at every boot."""
    (tmp_path / where).write_text(text)
    cmdline = str(tmp_path / "cmdline") if where == "cmdline" else "/dev/null"
    argv = ["--config", str(tmp_path / "config")] if where == "config" else ["--device", "/dev/loop0"]
    code, _, err = run(capsys, verb, *argv, "--kernel-cmdline", cmdline)
    assert code == Exit.USAGE and f"reason={reason}" in err, err


def test_a_config_file_nested_too_deeply_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tomllib's RecursionError was an internal error: exit 1 at every boot (the file is in the initrd)."""
    (tmp_path / "config").write_text("protect = " + "[" * 3000 + "]" * 3000 + "\n")
    code, _, err = run(capsys, "run", "--config", str(tmp_path / "config"), "--kernel-cmdline", "/dev/null")
    assert code == Exit.USAGE and "reason=bad-toml" in err, err


def test_kernel_cmdline_skip_exits_77_without_touching_the_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cmdline").write_text("rollback.skip\n")
    code, _, err = run(capsys, "run", "--device", "/dev/does-not-exist", "--kernel-cmdline", str(tmp_path / "cmdline"))
    assert code == Exit.SKIPPED
    assert "rollback.skip" in err


def test_missing_device_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "status", "--device", "/dev/does-not-exist", "--kernel-cmdline", "/dev/null")
    assert code == Exit.REFUSED and "does not exist" in err


@pytest.mark.parametrize(
    ("device", "said"),
    [
        ("/dev/does-not-exist ", "device '/dev/does-not-exist ' does not exist"),
        ("/dev/null/", "cannot stat /dev/null/"),
    ],
)
def test_a_device_that_cannot_be_found_is_named_visibly_with_a_hint(
    capsys: pytest.CaptureFixture[str], device: str, said: str
) -> None:
    """A trailing space shown (it read "device /dev/x  does not exist"); ENOTDIR gave an empty hint."""
    code, _, err = run(capsys, "status", "--device", device, "--kernel-cmdline", "/dev/null")
    assert code == Exit.REFUSED and said in err and "hint='check the device setting" in err, err


def test_regular_file_is_not_a_block_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "disk.img").write_bytes(b"\0" * 4096)
    code, _, err = run(capsys, "run", "--device", str(tmp_path / "disk.img"), "--kernel-cmdline", "/dev/null")
    assert code == Exit.REFUSED and "not a block device" in err


@pytest.mark.parametrize("argv", [("config", "--json"), ("--device", "/nonexistent", "run")])
def test_entry_point_flushes_output_before_its_fast_exit(tmp_path: Path, argv: tuple[str, ...]) -> None:
    """run() skips the interpreter's teardown; what main() printed into pipes must still arrive."""
    result = subprocess.run(
        rollback_argv(*argv, config="/dev/null"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
            # the checkout first; the dependencies may come through PYTHONPATH too (nixpkgs' check phase)
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
    )
    if argv[0] == "config":
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["settings"]["subvolume"] == "root"
    else:
        assert result.returncode == 3
        assert "refused" in result.stderr and "/nonexistent" in result.stderr


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (("run", "--mode", "snapshotx"), "invalid choice: 'snapshotx'"),
        (("run", "--keep-days", "ten"), "invalid integer value: 'ten'"),
        (("run", "--keep-days", "5_0"), "invalid integer value: '5_0'"),  # int() reads 50
        (("run", "--keep-count", "١٢"), "invalid integer value: '١٢'"),  # int() reads 12
        (("run", "--device"), "expected one argument"),
        (("run", "--no-such-flag"), "unrecognized arguments: --no-such-flag"),
        (("explode",), "invalid choice: 'explode'"),
        ((), "the following arguments are required: VERB"),
    ],
)
def test_a_command_line_that_does_not_parse_is_exit_2_with_its_reason(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], said: str
) -> None:
    """As every other exit 2: one `invalid` event with a reason (the journal keeps a broken drop-in's)."""
    code, _, err = run(capsys, *argv, "--log-target", "console")
    assert code == Exit.USAGE
    assert said in err and "reason=usage" in err and "hint=" in err, err
    assert err.startswith("usage: rollback")


def test_ctrl_c_is_one_line_with_its_reason_not_a_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT at a rescue shell printed Python's traceback and logged no reason."""
    import rollback.verbs

    def interrupted(*args: object, **kwargs: object) -> Exit:
        raise KeyboardInterrupt

    monkeypatch.setattr(rollback.verbs, "status", interrupted)
    code, _, err = run(capsys, "status", "--device", "/dev/test", "--kernel-cmdline", "/dev/null")
    assert code == Exit.FAILED and "Traceback" not in err
    assert "interrupted (SIGINT, Ctrl-C) before it ended" in err and "reason=interrupted" in err and "exit=1" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_stopped_by_systemd_or_a_lost_terminal_is_one_line_with_its_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, signum: signal.Signals
) -> None:
    """SIGTERM (systemd stopping the unit: a timeout, a shutdown) and SIGHUP (a rescue shell's terminal
    gone) ended a run without a word: the journal said only that the unit was stopped. Now the same one
    line as Ctrl-C, naming the signal, then it dies of the signal as before (die_of: systemd counts a
    SIGTERM as a clean stop); the handlers are put back after."""
    import rollback.verbs

    def stopped(*args: object, **kwargs: object) -> Exit:
        os.kill(os.getpid(), signum)
        raise AssertionError("not stopped")

    died = list[signal.Signals]()
    monkeypatch.setattr(rollback.verbs, "status", stopped)
    monkeypatch.setattr(rollback.cli, "die_of", died.append)  # (else this test process would die of it)
    inherited = signal.signal(signum, signal.SIG_DFL)  # (a test run under nohup inherits SIGHUP ignored)
    try:
        code, _, err = run(capsys, "status", "--device", "/dev/test", "--kernel-cmdline", "/dev/null")
        assert signal.getsignal(signum) == signal.SIG_DFL  # put back after
    finally:
        signal.signal(signum, inherited)
    assert died == [signum] and code == Exit.FAILED and "Traceback" not in err, err
    assert f"interrupted ({signum.name}, sent to stop it) before it ended" in err and "reason=interrupted" in err
    assert f"exit={128 + signum}" in err


def test_a_stop_signal_as_the_verb_ends_goes_to_the_handler_put_back(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM after the verb ended, while the handlers were put back, raised the verb's "interrupted"
    from the restoring code: the verb's exit status lost (the early process published 1 for a run that
    had succeeded; a reviewer). It is kept and sent again to the handler put back (the early process's
    defers it until its status is published), and the verb's exit status stands."""
    import rollback.verbs

    ended: list[bool] = []

    def status(*args: object, **kwargs: object) -> Exit:
        ended.append(True)
        return Exit.OK

    monkeypatch.setattr(rollback.verbs, "status", status)
    real = signal.signal
    sent: list[bool] = []

    def putting_back(number: int, handler: object) -> object:
        if ended and not sent and number == signal.SIGTERM:  # the stop arrives as the handlers are put back
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(number, handler)  # type: ignore[arg-type]

    got: list[int] = []
    before = real(signal.SIGTERM, lambda signum, _frame: got.append(signum))
    monkeypatch.setattr(signal, "signal", putting_back)
    try:
        code, _, err = run(capsys, "status", "--device", "/dev/test", "--kernel-cmdline", "/dev/null")
        delivered = list(got)
    finally:
        real(signal.SIGTERM, before)
    assert sent and (code, delivered) == (Exit.OK, [signal.SIGTERM]), err
    assert "interrupted" not in err


def test_a_hangup_ignored_as_inherited_stays_ignored(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nohup rollback cleanup` (a wait of up to an hour): the handler replaced the inherited SIG_IGN, and the
    terminal's hangup stopped it (found by a reviewer)."""
    import rollback.verbs

    seen = []

    def status(*args: object, **kwargs: object) -> Exit:
        seen.append(signal.getsignal(signal.SIGHUP))
        return Exit.OK

    monkeypatch.setattr(rollback.verbs, "status", status)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        code, _, _ = run(capsys, "status", "--device", "/dev/test", "--kernel-cmdline", "/dev/null")
        assert code == Exit.OK and seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_an_error_without_a_hint_of_its_own_gets_the_reasons_table_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config file's wrong type printed `hint=` with nothing after it."""
    from rollback.reasons import REASONS

    config = tmp_path / "rollback.toml"
    config.write_text("keep-count = true\n")
    code, _, err = run(capsys, "config", "--config", str(config), "--kernel-cmdline", "/dev/null")
    assert code == Exit.USAGE and "reason=bad-value" in err
    assert f"hint='{REASONS['bad-value'].action}'" in err or f"hint={REASONS['bad-value'].action}" in err, err


def test_an_age_under_a_clock_behind_says_so() -> None:
    """`rollback status` with the clock behind a root's creation said "(0s ago)"."""
    from rollback.report import _age

    assert _age(90) == "1m ago" and _age(0) == "0s ago"
    assert _age(-3 * 86400) == "3d after this clock's now: a clock is wrong"


def test_rd_words_are_read_on_the_running_system_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rd.rollback.* is the boot's setting: `rollback config` on the running system showed the settings
    without it (a reviewer), then named it as not read; status and skip-next answered for settings the
    boot did not have (a tester). Every verb reads it, as the boot does (not in_initrd-dependent)."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet rd.rollback.skip rollback.protect=srv rd.rollback.subvolume=@root\n")
    args = ("--device", "/dev/test", "--kernel-cmdline", str(cmdline))
    code, out, _ = run(capsys, "config", "--json", *args)
    found = json.loads(out)
    assert code == Exit.OK and found["settings"]["skip"] is True and found["settings"]["subvolume"] == "@root"
    assert found["sources"]["subvolume"] == "kernel command line", found["sources"]


def test_an_internal_error_has_the_reasons_table_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rollback.verbs

    def broken(*args: object, **kwargs: object) -> Exit:
        raise RuntimeError("a bug")

    monkeypatch.setattr(rollback.verbs, "status", broken)
    code, _, err = run(capsys, "status", "--device", "/dev/test", "--kernel-cmdline", "/dev/null")
    assert code == Exit.FAILED and "reason=internal" in err and "hint='report it'" in err, err


def test_ctrl_c_before_the_exit_boundary_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted while importing or parsing (before the boundary): Python's traceback, no reason."""
    import rollback.cli

    def interrupted(argv: object = None) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(rollback.cli, "main", interrupted)
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    with pytest.raises(SystemExit) as ended:
        rollback.cli.run()
    assert ended.value.code == Exit.FAILED
    assert "interrupted (SIGINT, Ctrl-C) before it began: nothing was changed" in capsys.readouterr().err


def test_interrupted_while_the_programs_modules_load_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while entry imported rollback.cli (settings, errors): a traceback and exit 130 (a signals
    tester: 3 of ~110 timed Ctrl-Cs), where the docs promise one line and exit 1."""
    import sys

    import rollback.entry

    class Interrupting:
        def find_spec(self, name: str, *args: object) -> None:
            if name == "rollback.cli":
                raise KeyboardInterrupt

    monkeypatch.setattr(rollback.entry, "_in_utf8_mode", lambda: None)  # no exec of pytest itself
    monkeypatch.delitem(sys.modules, "rollback.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    monkeypatch.setattr(os, "_exit", lambda code: (_ for _ in ()).throw(SystemExit(code)))
    with pytest.raises(SystemExit) as ended:
        rollback.entry.main()
    assert ended.value.code == Exit.FAILED
    assert capsys.readouterr().err == rollback.entry.INTERRUPTED


@pytest.mark.parametrize(
    ("where", "hint"),
    [("config", "as configured (every run skips while skip is set in"), ("flag", "the next boot rolls back again")],
)
def test_a_skip_from_the_config_file_is_not_said_to_last_one_boot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, hint: str
) -> None:
    """skip = true in the file (NixOS's `skip`): "the next boot rolls back again", while every boot
    skipped (a docs auditor)."""
    (tmp_path / "config").write_text("skip = true\n" if where == "config" else "")
    flags = ["--skip"] if where == "flag" else []
    code, _, err = run(
        capsys,
        "run",
        *flags,
        "--config",
        str(tmp_path / "config"),
        "--device",
        "/dev/test",
        "--kernel-cmdline",
        "/dev/null",
    )
    assert code == Exit.SKIPPED and hint in err, err


def test_an_invalid_rd_option_is_refused_outside_the_initrd_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not read here, but refused at every boot: `rollback config` said nothing of it (a reviewer)."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet rd.rollback.keep_days=abc\n")
    code, _, err = run(capsys, "config", "--device", "/dev/test", "--kernel-cmdline", str(cmdline))
    assert code == Exit.USAGE and "rd.rollback.keep_days=abc" in err and "reason=bad-value" in err, err


@pytest.mark.parametrize("verb", [("config",), ("status",), ("run", "--dry-run")], ids=lambda v: " ".join(v))
@pytest.mark.parametrize(
    ("words", "reason"),
    [
        ("rd.rollback.mode=bogus", "bad-choice"),
        ("rd.rollback.keep-days=5", "conflict"),  # no archive to keep them in
        ("rd.rollback.subvolume=/x", "bad-name"),
        ("rd.rollback.protect=root", "conflict"),
    ],
)
def test_settings_the_initrd_would_refuse_are_refused_outside_it_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: tuple[str, ...], words: str, reason: str
) -> None:
    """Each word parses alone; the initrd refuses the settings they make (at every boot), while status,
    config and run --dry-run on the running system, not reading them, exited 0 (a names tester); they
    read them now, as the boot does. Refused before the device is looked at (/dev/test does not exist)."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"quiet {words}\n")
    code, _, err = run(capsys, *verb, "--device", "/dev/test", "--kernel-cmdline", str(cmdline))
    assert code == Exit.USAGE and f"reason={reason}" in err, err


@pytest.mark.parametrize(
    ("line", "code", "reason"),
    [
        (b"BOOT_IMAGE=/vmlinuz root=LABEL=caf\xe9 rollback.skip\n", Exit.SKIPPED, ""),  # another's word
        (b"quiet rollback.subvolume=caf\xe9\n", Exit.USAGE, "bad-encoding"),  # ours
        (b"quiet rd.rollback.subvolume=caf\xe9\n", Exit.USAGE, "bad-encoding"),
        ("quiet rollback.subvolume=x\u2003rollback.skip\n".encode(), Exit.USAGE, "bad-name"),  # one word
        ("quiet rollback.subvolume=x\u00a0rollback.skip\n".encode(), Exit.USAGE, "bad-name"),
    ],
)
def test_the_kernel_command_line_is_read_word_by_word_as_systemd_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: bytes, code: Exit, reason: str
) -> None:
    """A byte that is not UTF-8 in another program's word refused every boot, rollback.skip included;
    a non-breaking or em space split words that systemd reads as one (a names tester)."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(line)
    found, _, err = run(capsys, "run", "--device", "/dev/test", "--kernel-cmdline", str(cmdline))
    assert found == code and f"reason={reason}" in err, err


def test_a_kernel_command_line_that_never_ends_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--kernel-cmdline /dev/zero was read until memory ran out (a names tester); the config file's guard."""
    code, _, err = run(capsys, "config", "--device", "/dev/test", "--kernel-cmdline", "/dev/zero")
    assert code == Exit.USAGE and "reason=cmdline-unreadable" in err, err


def _flags_taking_a_value() -> list[str]:
    """Every option of the parser that takes a value: the settings table's and the global ones."""
    from rollback.cli import build_parser
    from rollback.settings import SETTINGS

    found = [a.option_strings[-1] for a in build_parser()._actions if a.option_strings and a.nargs != 0]
    assert {s.flag for s in SETTINGS if s.parser.bare is None} < set(found)
    assert {"--config", "--kernel-cmdline", "--log-target"} < set(found)
    return found


@pytest.mark.parametrize("where", ["after the verb", "before the verb", "abbreviated"])
@pytest.mark.parametrize("flag", _flags_taking_a_value())
def test_a_value_of_two_dashes_is_a_usage_error(capsys: pytest.CaptureFixture[str], flag: str, where: str) -> None:
    """`--subvolume=--`: Python 3.11's argparse stores [] unchecked; that was an internal error (an
    AssertionError, a TypeError) or, for --log-target, silently taken for unset."""
    given = f"{flag[:-1] if where == 'abbreviated' else flag}=--"
    argv = (given, "config") if where == "before the verb" else ("config", given)
    others = [("--kernel-cmdline", "/dev/null"), ("--log-target", "console")]  # unless it is the one tested
    code, out, err = run(capsys, *argv, *[word for other in others if other[0] != flag for word in other])
    assert code == Exit.USAGE and out == "", err
    assert f"argument {flag}: expected one argument, got '--'" in err and "reason=usage" in err, err
    assert "Traceback" not in err and "internal" not in err


@pytest.mark.parametrize("as_json", [(), ("--json",)], ids=["text", "json"])
def test_config_output_that_cannot_be_written_is_reason_output_failed(as_json: tuple[str, ...]) -> None:
    """`rollback config > /dev/full` was `internal error: OSError(28)` (tests/btrfs/test_reports.py: every
    printing verb)."""
    with open("/dev/full", "w") as full:
        result = subprocess.run(rollback_argv("config", *as_json), stdout=full, stderr=subprocess.PIPE, text=True)
    assert result.returncode == Exit.FAILED
    assert "reason=output-failed" in result.stderr and "No space left on device" in result.stderr, result.stderr
    assert "internal" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("encoding", "device", "shown"),
    # (a byte that is not UTF-8 in a device path is refused now: unit/test_settings.py::test_invalid_settings)
    [("ascii", "/dev/disk-café", "/dev/disk-caf\\u00e9"), ("latin-1", "/dev/disk-Ωmega", "/dev/disk-\\u03a9mega")],
)
def test_config_output_the_encoding_cannot_carry_is_escaped(encoding: str, device: str, shown: str) -> None:
    result = subprocess.run(
        rollback_argv("config", device=device), capture_output=True, env={**os.environ, "PYTHONIOENCODING": encoding}
    )
    assert result.returncode == Exit.OK, result.stderr.decode(errors="replace")
    assert shown in result.stdout.decode(encoding)


@pytest.mark.parametrize(
    ("made", "device", "hint"),
    [
        ([], "/dev/disk/by-uuid/0f1e", "there is no /dev/disk here: udev has not made its links"),
        (
            ["/dev/disk/by-uuid/0a1b-c2d3"],
            "/dev/disk/by-uuid/0A1B-C2D3",
            "udev's link is in lower case: /dev/disk/by-uuid/0a1b",
        ),
        (["/dev/disk/by-label/x"], "/dev/disk/by-label/X", "check the device setting (lsblk -f"),
        (["/dev/disk/by-uuid/0a1b"], "/dev/sdz", "check the device setting (lsblk -f"),
    ],
    ids=["no udev", "capitals", "a label's case is its own", "a node"],
)
def test_a_device_link_that_does_not_exist_gets_a_hint_for_why(
    fs: FakeFilesystem, made: list[str], device: str, hint: str
) -> None:
    """`UUID=` in a rescue shell or a container, where udev made no /dev/disk links; a UUID in capitals,
    where udev's links are lower case (a label's case is its own)."""
    for path in made:
        fs.create_file(path)
    with pytest.raises(Refused) as caught:
        device_effects.probe(device)
    assert caught.value.code == "no-device" and caught.value.hint.startswith(hint), caught.value.hint


@pytest.mark.parametrize(
    ("booted", "said"),
    [
        (5, "booted:     from the top level, not root"),
        (999, "booted:     from subvolume id 999, no longer listed (deleted while mounted), not root"),
        (257, "booted:     from 'other' (id 257), not root"),
    ],
)
def test_status_names_the_subvolume_booted_from_or_says_it_is_gone(booted: int, said: str) -> None:
    """A running root deleted while mounted (the kernel lets it) is not listed: status said "the top
    level" for it (found by a diff reviewer)."""
    from rollback.report import status, status_lines
    from tests.support.factory import config, observe

    obs = observe(["root", "other"])
    obs = dataclasses.replace(obs, mounted={booted: "/"})
    lines = status_lines(status(config(), obs))
    assert any(line.startswith(said) for line in lines), lines


@pytest.mark.parametrize(
    ("words", "unit", "said"),
    [
        ("quiet", False, None),
        ("init=/usr/lib/systemd/systemd", False, None),  # the root's own: judged
        ("init=/sbin/init init=", False, None),
        ("init=/nix/store/abc-nixos-system/init", False, "init=/nix/store/abc-nixos-system/init on the kernel"),
        ("mount.usr=/dev/vda3", False, "mount.usr=/dev/vda3 on the kernel command line"),
        ("mount.usrflags=subvol=@usr", False, "mount.usrflags=subvol=@usr on the kernel command line"),
        ("usrhash=0123abcd", False, "usrhash=0123abcd on the kernel command line"),
        ("systemd.mount-extra=LABEL=usr:/usr:btrfs", False, "systemd.mount-extra=LABEL=usr:/usr:btrfs on"),
        ("systemd.mount-extra=LABEL=srv:/srv", False, None),
        ("rd.systemd.mount-extra=LABEL=usr:/usr", False, None),  # the initrd's own /usr, gone at the switch
        ("rd.systemd.mount-extra=LABEL=usr:/sysroot/usr", True, "sysroot-usr.mount in the initrd"),  # its unit
        ("rdinit=/process_api", False, None),
        ("quiet", True, "sysroot-usr.mount in the initrd"),
    ],
)
def test_what_starts_the_system_from_outside_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, words: str, unit: bool, said: str | None
) -> None:
    """plan.check_bootable does not judge a system started from elsewhere; init= only outside the root's
    own system directories (a reviewer: init=/usr/lib/systemd/systemd is the root's)."""
    from rollback.effects import sysroot

    (tmp_path / "sysroot.mount").write_text("[Mount]\n")  # as the test hook names the initrd's units
    if unit:
        (tmp_path / "sysroot-usr.mount").write_text("[Mount]\n")
    monkeypatch.setenv(sysroot.SYSROOT_UNIT_ENV, str(tmp_path / "sysroot.mount"))
    found = sysroot.system_elsewhere(("", words))
    assert (found is None) if said is None else (found is not None and said in found), found


@pytest.mark.parametrize(
    ("usr", "apart"),
    [
        ("", False),
        ("30 22 0:21 /root/usr /usr ro,relatime shared:3 - btrfs /dev/vda2 ro,subvolid=256,subvol=/root", False),
        ("30 22 0:21 /@usr /usr ro,relatime shared:3 - btrfs /dev/vda2 ro,subvolid=258,subvol=/@usr", True),
        ("30 22 0:35 / /usr rw shared:3 - ext4 /dev/vda3 rw", True),
        ("30 22 0:40 / /usr ro shared:3 - overlay overlay ro,lowerdir=/usr:/run/extensions/usr", False),
    ],
    ids=["none", "a bind of the root's own", "a subvolume of its own", "a partition", "sysext's overlay"],
)
def test_the_running_systems_usr_counts_as_elsewhere_only_when_it_is_not_the_roots(usr: str, apart: bool) -> None:
    """status counted a bind of the root's own usr/ (`/usr /usr none bind,ro`, ProtectSystem=) as /usr
    from elsewhere and said the next boot goes on, while the boot refused holds-system (a tester)."""
    from rollback import mountinfo
    from rollback.effects import sysroot

    table = "22 1 0:21 /root / rw,relatime shared:1 - btrfs /dev/vda2 rw,subvolid=256,subvol=/root\n" + usr
    assert sysroot.usr_apart(mountinfo.parse(table)) is apart


@pytest.mark.parametrize(
    ("booted", "elsewhere", "refused"),
    [("/", None, True), ("/", "init=/nix/store/x/init on the kernel command line", False), ("/mnt", None, False)],
)
def test_status_says_the_next_boot_refuses_a_root_without_the_system(
    booted: str, elsewhere: str | None, refused: bool
) -> None:
    """The running system's root holds the operating system and the settings make an empty root: the
    next boot refuses it (plan.check_bootable), and status says so where the root is the one booted."""
    from rollback.model import SystemSigns
    from rollback.report import status
    from tests.support.factory import config, observe

    obs = observe(["root", "persist"], mounted={"root": booted})
    obs = dataclasses.replace(obs, systems={"root": SystemSigns(found=True, whole=True, usr_in_fstab=False)})
    said = status(config(), obs, elsewhere=elsewhere)["next_boot_refused"]
    assert (said is not None and "reason holds-system" in said) is refused, said


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        ({"skip": True}, "next boot:  SKIPPED: skip is set as a flag: every run keeps the root while it is"),
        ({}, None),
    ],
)
def test_status_says_when_skip_keeps_the_root(flags: dict[str, bool], said: str | None) -> None:
    """`skip = true` in the config file: every boot exit 77, status silent (found by a settings tester)."""
    from rollback.report import status, status_lines
    from tests.support.factory import config, observe

    lines = status_lines(status(config(**flags), observe(["root"])))
    assert [line for line in lines if "SKIPPED" in line] == ([said] if said else []), lines


@pytest.mark.parametrize(("gone", "reads"), [(1, 2), (2, 3), (3, 3)])
def test_an_observation_that_met_something_gone_reads_again(
    monkeypatch: pytest.MonkeyPatch, gone: int, reads: int
) -> None:
    """The trash rmdir'd or quotas disabled by hand while a verb read the filesystem: ENOENT from a
    listing or the quota tree ended the verb as exit 1 "internal error, report it" (found by a
    concurrency tester). It reads again, up to three times; gone at every read, the error stands."""
    from rollback import verbs
    from rollback.effects import btrfs
    from rollback.model import Mounts
    from tests.support.factory import NOW, config, observe

    calls: list[int] = []
    found = observe(["root"])

    def reading(*args: object) -> object:
        calls.append(1)
        if len(calls) <= gone:
            raise FileNotFoundError(2, "No such file or directory", ".rollback/trash")
        return found

    monkeypatch.setattr(btrfs, "observe", reading)
    if gone < 3:
        assert verbs._observe(config(), Path("/nowhere"), Mounts({}, {}), NOW) is found
    else:
        with pytest.raises(FileNotFoundError):
            verbs._observe(config(), Path("/nowhere"), Mounts({}, {}), NOW)
    assert len(calls) == reads


_TRIGGERED = """
import sys
from rollback import entry, cli
from rollback.effects import standby
cli.build_parser().parse_args(["standby", "/run/x", *sys.argv[1:]])  # the early process's own command line
standby.warm()  # then what it does before the device is ready
ours = {name for name in sys.modules if name.startswith("rollback")}
code = cli.main(sys.argv[1:])  # triggered
print(cli.build_parser.cache_info().misses, code)
print(*sorted(name for name in sys.modules if name.startswith("rollback") and name not in ours))
"""


def test_a_triggered_early_process_builds_no_parser_and_imports_nothing_of_ours() -> None:
    """Once the root device is ready (the trigger), the early process only works: the parser it built
    for its own command line serves the run's (built again, it was ~3 ms of CPU on the critical path,
    ~20 times that under TCG), and warm() imported every module of ours the run imports (it missed the
    root mount's reader). The run here stops at the device, after the checks that import those."""
    launched = subprocess.run(
        rollback_argv(
            "run", device="/dev/disk/by-id/rollback-test-absent", launcher=(sys.executable, "-c", _TRIGGERED)
        ),
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        env={**os.environ, "ROLLBACK_LOG_TARGET": "console"},
        timeout=60,
    )
    built, code = launched.stdout.splitlines()[0].split()
    assert (built, int(code)) == ("1", Exit.REFUSED), launched.stderr
    assert "reason=no-device" in launched.stderr
    assert launched.stdout.splitlines()[1:] in ([], [""]), launched.stdout
