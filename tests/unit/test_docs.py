"""The README documents what the code defines: settings, exit codes, MESSAGE_IDs."""

from __future__ import annotations

from pathlib import Path

from rollback.errors import Exit
from rollback.events import EVENTS
from rollback.settings import SETTINGS

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    for setting in SETTINGS:
        assert f"| `{setting.key}` | `{setting.flag}" in README, setting.key


def test_every_exit_code_is_documented() -> None:
    for code in Exit:
        assert f"\n| {int(code)} | " in README, code


def test_every_message_id_is_documented() -> None:
    for kind, event in EVENTS.items():
        assert f"| {kind} | `{event.message_id}` |" in README, kind


def test_every_verb_and_its_flags_are_in_the_readme_usage() -> None:
    from rollback.cli import VERBS

    usage = README[README.index("## Using it") :]
    usage = usage[: usage.index("```", usage.index("```") + 3)]
    for verb in VERBS:
        lines = [line for line in usage.splitlines() if line.startswith(f"rollback {verb.name} ")]
        assert lines, verb.name
        for flag, _ in verb.flags:
            assert any(flag in line for line in lines), (verb.name, flag)


def test_every_test_the_reliability_table_names_exists() -> None:
    """docs/reliability.md counts cases by the tests that prove them: a renamed or removed test must not
    leave a row pointing at nothing."""
    import fnmatch
    import re

    tests = Path(__file__).parents[1]
    text = (tests.parent / "docs" / "reliability.md").read_text()
    checked = 0
    for cell in re.findall(r"\| ([^|]*test_\w+\.py[^|]*) \|\s*$", text, re.MULTILINE):  # the last column
        path = ""
        for token in re.findall(r"(?:(?:unit|btrfs|vm)/test_\w+\.py)|\btest_[\w*]+", cell):
            if token.endswith(".py"):
                path = token
                defined = re.findall(r"^def (test_\w+)", (tests / path).read_text(), re.MULTILINE)
            else:
                assert path and fnmatch.filter(defined, token), f"docs/reliability.md names {path}::{token}"
                checked += 1
    assert checked > 60


def _blocks(text: str, heading: str) -> list[str]:
    """The command lines of the ```sh blocks below `heading`, up to the next heading of its level."""
    level = heading.split(" ")[0]
    section = text[text.index(heading) + len(heading) :]
    section = section.split(f"\n{level} ", 1)[0]
    return [line for block in section.split("```sh\n")[1:] for line in block.split("```")[0].splitlines()]


def test_the_commands_to_start_with_run_in_a_root_shell_without_sudo() -> None:
    """A minimal Debian 12 has no sudo: `sudo ./scripts/demo` failed there, as written."""
    development = (Path(__file__).parents[2] / "docs" / "development.md").read_text()
    sections = [
        (README, "## Two commands (Debian 12, as root)"),
        (README, "## Install (dracut: Debian, Ubuntu, Fedora)"),
        (development, "## Two commands (Debian 12, as root)"),
    ]
    for text, heading in sections:
        commands = [line for line in _blocks(text, heading) if line and not line.startswith("#")]
        assert commands, heading
        assert not [line for line in commands if "sudo" in line.split("#")[0]], heading
    assert [line.split()[0] for line in _blocks(README, "## Two commands (Debian 12, as root)")] == [
        "./scripts/demo",
        "./scripts/test",
    ]


def _fake_setup(tmp_path: Path, *args: str) -> tuple[list[str], list[str]]:
    """scripts/setup run in a copy of the checkout with apt-get, dpkg-query and the venv's pip faked
    (nothing installed): the apt-get and pip command lines it ran."""
    import os
    import shutil
    import subprocess

    root = Path(__file__).parents[2]
    tree, bin_ = tmp_path / "tree", tmp_path / "bin"
    (tree / "scripts").mkdir(parents=True)
    bin_.mkdir()
    shutil.copy(root / "scripts" / "setup", tree / "scripts" / "setup")
    (tree / "pyproject.toml").write_text("")
    log = tmp_path / "log"
    fakes = {
        "apt-get": f'echo "apt-get $*" >> {log}',
        "dpkg-query": "exit 1",  # nothing installed
        "python": f"mkdir -p .venv/bin && printf '#!/bin/sh\\necho \"pip $*\" >> {log}\\n' > .venv/bin/pip\n"
        "chmod +x .venv/bin/pip && touch .venv/bin/python && chmod +x .venv/bin/python",
    }
    for name, body in fakes.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "PYTHON": str(bin_ / "python")}
    result = subprocess.run([tree / "scripts" / "setup", *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ran = log.read_text().splitlines()
    return [line for line in ran if line.startswith("apt-get install")], [line for line in ran if "pip" in line]


def test_the_demo_sets_up_only_what_it_runs(tmp_path: Path) -> None:
    """scripts/demo ran the test tiers' setup: a cloud kernel (GRUB's default entry then, on a real
    machine), qemu, Nix, with Recommends, and the test tools. Its setup installs the README's runtime
    packages without dracut, no Recommends, and the package alone; scripts/test keeps the full one."""
    root = Path(__file__).parents[2]
    assert "./scripts/setup --demo" in (root / "scripts" / "demo").read_text()
    assert "./scripts/setup\n" in (root / "scripts" / "test").read_text()
    assert "exec ./scripts/test" in (root / ".ci" / "run").read_text()
    apt_line = next(line for line in _blocks(README, "## Install (dracut: Debian, Ubuntu, Fedora)") if "apt " in line)
    runtime = set(apt_line.split("#")[0].split()[2:]) - {"dracut"}
    (apt,), (pip,) = _fake_setup(tmp_path / "demo", "--demo")
    assert "--no-install-recommends" in apt.split()
    assert set(apt.split()) - {"apt-get", "install", "-y", "-qq", "--no-install-recommends"} == runtime | {
        "util-linux",
        "mount",
    }
    assert pip.endswith(" -e .")
    (apt,), (pip,) = _fake_setup(tmp_path / "full")
    assert "--no-install-recommends" not in apt.split()
    assert {"linux-image-cloud-amd64", "dracut-core", "qemu-system-x86", "nix-bin"} < set(apt.split())
    assert pip.endswith(" -e .[test]")


def test_the_manual_stop_boot_instructions_are_the_drop_in_the_dracut_module_writes() -> None:
    """`systemctl add-requires sysroot.mount ...` fails (sysroot.mount is generated at boot: "unit does not
    exist"), and a reader following it was left with the OnFailure drop-in alone: the root mounted dirty
    (a unit reviewer's finding). Every place that says how names the module's sysroot.mount drop-in."""
    root = Path(__file__).parents[2]
    module = (root / "packaging/dracut/90rollback/module-setup.sh").read_text()
    assert "sysroot.mount.d/rollback.conf" in module and "Requires=%s\\nAfter=%s" in module
    for name in ("units/rollback@.service", "units/rollback-stop-boot.conf", "docs/design.md"):
        text = (root / name).read_text()
        assert "sysroot.mount.d/rollback.conf" in text and "Requires=" in text, name
        assert "add-requires sysroot.mount" not in text, name
