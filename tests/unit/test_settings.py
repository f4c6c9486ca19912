"""Settings: precedence, the sources, and every config error (config files through pyfakefs)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from rollback.cmdline import split_cmdline
from rollback.errors import ConfigError
from rollback.settings import DEFAULT_CONFIG, SETTINGS, Layer, Value, describe, resolve
from rollback.sources import load_config_file, parse_cmdline, read_cmdline


def test_defaults() -> None:
    config = resolve({}, {}, {})
    assert (config.subvolume, config.mode, config.archive, config.protect) == (
        "root",
        "recreate",
        "",
        ("persist", "nix", "home"),
    )
    assert set(config.sources.values()) == {"default"}


def test_precedence_flags_over_cmdline_over_file_over_defaults() -> None:
    file = {"subvolume": "from-file", "mode": "snapshot", "blank": "file-blank"}
    cmdline = {"subvolume": "from-cmdline", "mode": "recreate"}
    flags = {"subvolume": "from-flag"}
    config = resolve(file, cmdline, flags, "/etc/rollback.toml")
    assert (config.subvolume, config.mode, config.blank) == ("from-flag", "recreate", "file-blank")
    assert config.sources["subvolume"] == "flag"
    assert config.sources["mode"] == "kernel command line"
    assert config.sources["blank"] == "/etc/rollback.toml"
    assert config.sources["archive"] == "default"


def test_protect_file_replaces_defaults_and_others_add() -> None:
    config = resolve({"protect": ("persist", "srv")}, {"protect": ("data",)}, {"protect": ("var-lib", "srv")})
    assert config.protect == ("persist", "srv", "data", "var-lib")


def test_describe_lists_every_setting_with_its_source() -> None:
    rows = describe(resolve({}, {"skip": True}, {"device": "/dev/x"}))
    assert [r[0] for r in rows] == [s.key for s in SETTINGS]
    assert ("skip", "True", "kernel command line") in rows
    assert ("device", "/dev/x", "flag") in rows


@pytest.mark.parametrize(
    ("layer", "code"),
    [
        ({"subvolume": ""}, "bad-name"),
        ({"subvolume": "/root"}, "bad-name"),
        ({"subvolume": "../root"}, "bad-name"),
        ({"archive": "old roots"}, "bad-name"),
        ({"protect": ("a/../b",)}, "bad-name"),
        ({"mode": "zap"}, "bad-choice"),
        ({"cleanup": "later"}, "bad-choice"),
        ({"keep_days": -1, "archive": "old"}, "bad-number"),
        ({"keep_days": 740_000, "archive": "old"}, "bad-number"),
        ({"keep_days": 36501, "archive": "old"}, "bad-number"),
        ({"keep_count": 10**9, "archive": "old"}, "bad-number"),
        ({"keep_min": -1, "archive": "old"}, "bad-number"),
        ({"keep_min": 2}, "conflict"),
        ({"subvolume": ".rollback/root"}, "bad-name"),
        ({"subvolume": "./.rollback//trash/x"}, "bad-name"),
        ({"archive": ".rollback"}, "bad-name"),
        ({"archive": ".rollback/old/"}, "bad-name"),
        ({"mode": "snapshot", "blank": ".rollback/blank"}, "bad-name"),
        ({"protect": (".rollback/trash",)}, "bad-name"),
        ({"archive": "old", "blank": "old/blank", "mode": "snapshot"}, "conflict"),
        ({"archive": "old/", "subvolume": "./old//root"}, "conflict"),
        ({"subvolume": "persist/"}, "conflict"),
        ({"device": "sda2"}, "bad-name"),
        ({"device": "UUID="}, "bad-name"),
        ({"device": 'UUID=""'}, "bad-name"),
        ({"device": "/dev/vda\0"}, "bad-name"),
        ({"device": "/tmp/d\x1b[31mRED\nfsid: fake"}, "bad-name"),  # printed as given: forged lines (a tester)
        ({"device": "/dev/dev\udce9"}, "bad-name"),  # a byte that is not UTF-8
        ({"device": "LABEL=a\x9b31mRED\u2028fsid:x"}, "bad-name"),  # a C1 escape and a line separator
        ({"keep_count": 3}, "conflict"),
        ({"archive": "root/old"}, "conflict"),
        ({"archive": "old", "subvolume": "old/root"}, "conflict"),
        ({"mode": "snapshot", "blank": "root"}, "conflict"),
        ({"subvolume": "persist"}, "conflict"),
        ({"archive": "persist"}, "conflict"),  # roots moved into a protected subvolume
        ({"archive": "backups/nix/"}, "conflict"),
        ({"archive": "home", "protect": ("home",)}, "conflict"),
    ],
)
def test_invalid_settings(layer: dict[str, object], code: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve({}, {}, layer)  # type: ignore[arg-type]
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("layer", "shown", "code"),
    [
        ({"subvolume": "r\udcffoot"}, "subvolume 'r\\xffoot'", "bad-name"),  # from argv, os.fsdecode'd
        ({"protect": ("data", "b\udcff")}, "protect 'b\\xff'", "bad-name"),  # the one at fault, not the list
        ({"mode": "z\udcff"}, "mode 'z\\xff'", "bad-choice"),
    ],
)
def test_a_value_that_is_not_utf8_reads_as_the_events_spell_it(layer: dict[str, object], shown: str, code: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve({}, {}, layer)  # type: ignore[arg-type]
    assert caught.value.code == code and caught.value.reason.startswith(shown), caught.value.reason


def test_kernel_cmdline_splitting_follows_the_kernel() -> None:
    assert split_cmdline('root=/dev/a  rollback.blank="x y"  quiet "a b"c') == [
        "root=/dev/a",
        "rollback.blank=x y",
        "quiet",
        "a bc",
    ]


def test_kernel_cmdline_options() -> None:
    layer = parse_cmdline(
        "BOOT_IMAGE=/vmlinuz rollback.skip rollback.mode=snapshot rollback.keep-count=3 "
        "rollback.protect=a,b rollback.protect=c ro"
    )
    assert layer == {"skip": True, "mode": "snapshot", "keep_count": 3, "protect": ("a", "b", "c")}


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        # dracut users put rd. on initrd-only options (rd.luks, rd.break): rollback.* spelt so (was:
        # ignored, and the root meant to be kept replaced); read on the running system too (was: ignored
        # there, systemd's rule, so status and skip-next answered for settings the boot did not have)
        ("rd.rollback.skip", {"skip": True}),
        ("rollback.keep-count=2 rd.rollback.keep-count=4", {"keep_count": 4}),  # the last one wins
        ("rd.rollback.protect=a rollback.protect=b", {"protect": ("a", "b")}),
        # systemd reads `_` and `-` alike in its own options (was: exit 2 at every boot)
        ("rollback.keep_days=5 rd.rollback.keep_min=1", {"keep_days": 5, "keep_min": 1}),
        ("rd.rollbackx.skip rdx.rollback.skip", {}),
    ],
)
def test_kernel_cmdline_spellings_systemd_users_write(words: str, expected: dict[str, object]) -> None:
    assert parse_cmdline(f"quiet {words} ro") == expected


def test_rd_options_that_are_wrong_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'rd\.rollback\.frobnicate=1'"):
        parse_cmdline("rd.rollback.frobnicate=1")


@pytest.mark.parametrize("value", ["1", "yes", "true", "on"])
def test_kernel_cmdline_booleans(value: str) -> None:
    assert parse_cmdline(f"rollback.skip={value}") == {"skip": True}


@pytest.mark.parametrize(
    "garbage",
    [
        "rollback.frobnicate=1",
        "rollback.keep-days=many",
        "rollback.skip=maybe",
        "rollback.mode",
        "rollback.keep-days=5_0",  # int() reads 50
        "rollback.keep-count=١٢",  # int() reads 12
        "rollback.keep-min=+-1",
        'rollback.keep-count="5\x1c"',  # str.strip() drops it, int() does not: was an internal error
    ],
)
def test_kernel_cmdline_garbage_is_a_config_error(garbage: str) -> None:
    with pytest.raises(ConfigError):
        parse_cmdline(f"quiet {garbage}")


@pytest.mark.parametrize(
    "word",
    [
        "Rollback.skip",
        "ROLLBACK.SKIP",
        "rd.Rollback.skip",
        "RD.rollback.skip",
        "\ufeffrollback.skip",  # a byte-order mark at the start of a file
        "\u200brollback.skip",  # a zero-width space pasted with it
        "rollback\u2024skip",  # a typographic dot (one dot leader)
        "rollback\u00b7skip",
        "\u00adrollback.skip",  # a soft hyphen
        "rollback_skip",  # another separator before a key of ours (a reviewer)
        "rollback-skip",
        "rollback=skip",
        "rollbackskip",
        "rollback_keep_days=3",
        "'rollback.skip'",  # quoted as in a document
        "\u201crollback.skip\u201d",
        "rollback\u00a0skip",  # a no-break space for the dot
    ],
)
def test_a_rollback_word_spelt_otherwise_is_refused_not_ignored(word: str) -> None:
    """Taken for another program's word, it was ignored, rollback.skip with it: the root the user asked
    to keep was replaced, while a misspelt key (rollback.SKIP) is refused (a tester of locales)."""
    with pytest.raises(ConfigError, match="looks like a rollback option but is not spelt as one") as refused:
        parse_cmdline(f"quiet {word} ro")
    assert refused.value.code == "unknown-key"


@pytest.mark.parametrize(
    "word",
    ["rollbackd=1", "rollback_x=2", "rollback-tool.y", "rollback=1", "ROLLBACK=yes", "rollback", "zfs.rollback=1"],
)
def test_other_programs_words_starting_so_are_theirs(word: str) -> None:
    assert parse_cmdline(f"quiet {word} ro") == {}


def test_read_cmdline_rejects_non_utf8(fs: FakeFilesystem) -> None:
    fs.create_file("/proc/cmdline", contents=b"rollback.subvolume=\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        parse_cmdline(read_cmdline("/proc/cmdline"))


def test_read_cmdline_from_file(fs: FakeFilesystem) -> None:
    fs.create_file("/proc/cmdline", contents="initrd=x rollback.skip=0\n")
    assert parse_cmdline(read_cmdline("/proc/cmdline")) == {"skip": False}


def test_config_file_default_absent_is_fine(fs: FakeFilesystem) -> None:
    assert load_config_file(None, DEFAULT_CONFIG) == ({}, DEFAULT_CONFIG)


def test_config_file_default_present_is_read(fs: FakeFilesystem) -> None:
    fs.create_file(DEFAULT_CONFIG, contents='device = "/dev/vda2"\nkeep-days = 7\narchive = "old"\n')
    layer, name = load_config_file(None, DEFAULT_CONFIG)
    assert (layer, name) == ({"device": "/dev/vda2", "keep_days": 7, "archive": "old"}, DEFAULT_CONFIG)


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ("mode = ", "not valid TOML"),
        ("colour = 'red'", "unknown key 'colour'"),
        ("keep-days = '7'", "expected int"),
        ("skip = 1", "expected bool"),
        ("protect = 'persist'", "expected a list"),
        ("keep_days = 7", "unknown key 'keep_days'"),
    ],
)
def test_config_file_errors(fs: FakeFilesystem, contents: str, message: str) -> None:
    fs.create_file("/etc/custom.toml", contents=contents)
    with pytest.raises(ConfigError, match=message):
        load_config_file("/etc/custom.toml", DEFAULT_CONFIG)


def test_a_byte_order_mark_is_named_in_the_hint(fs: FakeFilesystem) -> None:
    fs.create_file("/etc/custom.toml", contents='\ufeffsubvolume = "root"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config_file("/etc/custom.toml", DEFAULT_CONFIG)
    assert "byte order mark" in caught.value.hint and caught.value.code == "bad-toml"


def test_explicit_config_file_must_exist(fs: FakeFilesystem) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file("/etc/nope.toml", DEFAULT_CONFIG)


@pytest.mark.parametrize("target", ["/persist/etc/rollback.toml", "../persist/rollback.toml", "/nowhere"])
def test_a_default_config_linked_to_nowhere_is_not_no_config(fs: FakeFilesystem, target: str) -> None:
    """/etc/rollback.toml a link into /persist, not mounted (a rescue system): the defaults (recreate,
    no archive) would have replaced the root the user's settings archive."""
    fs.create_symlink(DEFAULT_CONFIG, target)
    with pytest.raises(ConfigError, match=r"symbolic link to .*, which does not exist") as caught:
        load_config_file(None, DEFAULT_CONFIG)
    assert caught.value.code == "config-unreadable" and "/persist" in caught.value.hint


def test_a_default_config_linked_to_a_file_is_read(fs: FakeFilesystem) -> None:
    fs.create_file("/persist/rollback.toml", contents="keep-days = 7\n")
    fs.create_symlink(DEFAULT_CONFIG, "/persist/rollback.toml")
    assert load_config_file(None, DEFAULT_CONFIG) == ({"keep_days": 7}, DEFAULT_CONFIG)


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "fifo")
    return str(tmp / "fifo")


def _big(tmp: Path) -> str:
    (tmp / "big.toml").write_text("# " + "x" * (1 << 20) + "\n")
    return str(tmp / "big.toml")


@pytest.mark.parametrize(
    ("where", "said"),
    [
        (lambda tmp: "/dev/zero", "larger than"),  # was: read until the memory ran out
        (_fifo, "not a regular file"),  # was: waited for a writer, for ever
        (lambda tmp: str(tmp), "not a regular file"),  # a directory
        (_big, "larger than"),
    ],
)
def test_a_config_that_is_not_a_small_regular_file_is_refused(
    tmp_path: Path, where: Callable[[Path], str], said: str
) -> None:
    with pytest.raises(ConfigError, match=said) as caught:
        load_config_file(where(tmp_path), DEFAULT_CONFIG)
    assert caught.value.code == "config-unreadable"


@pytest.mark.parametrize(("spelling", "name"), [("srv/", "srv"), ("./srv", "srv"), ("srv//", "srv"), ("a//b/.", "a/b")])
@pytest.mark.parametrize("setting", ["subvolume", "blank", "archive", "protect"])
def test_every_name_reaches_the_rules_in_its_one_spelling(setting: str, spelling: str, name: str) -> None:
    value: Value = (spelling,) if setting == "protect" else spelling
    layers: tuple[Layer, Layer, Layer]
    for layers in (({setting: value}, {}, {}), ({}, {setting: value}, {}), ({}, {}, {setting: value})):
        got = getattr(resolve(*layers), setting)
        assert (name in got and spelling not in got) if setting == "protect" else got == name


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ("/dev/vda2", "/dev/vda2"),
        ("UUID=3798ce50-7425-492a-afb0-52cde354928b", "/dev/disk/by-uuid/3798ce50-7425-492a-afb0-52cde354928b"),
        ("uuid=abc", "/dev/disk/by-uuid/abc"),
        ("LABEL=nixos", "/dev/disk/by-label/nixos"),
        ("LABEL=my disk", "/dev/disk/by-label/my\\x20disk"),
        ("LABEL=a/b", "/dev/disk/by-label/a\\x2fb"),
        ("LABEL=päckchen", "/dev/disk/by-label/päckchen"),
        ("LABEL=a\u00a0b", "/dev/disk/by-label/a\u00a0b"),  # not printable for Python; udev keeps any UTF-8
        ("LABEL=raw\udcffbyte", "/dev/disk/by-label/raw\\xffbyte"),  # an undecodable byte
        ("PARTUUID=0fc63daf-01", "/dev/disk/by-partuuid/0fc63daf-01"),
        ("PARTLABEL=root", "/dev/disk/by-partlabel/root"),
        ('UUID="3798ce50-7425"', "/dev/disk/by-uuid/3798ce50-7425"),  # as blkid prints it: systemd unquotes
        ("LABEL='my disk'", "/dev/disk/by-label/my\\x20disk"),
        ('LABEL="', "/dev/disk/by-label/\\x22"),  # one quote is the label
        ("LABEL='a\"", "/dev/disk/by-label/\\x27a\\x22"),  # unmatched: kept
    ],
)
def test_devices_are_written_as_in_fstab_too(spec: str, path: str) -> None:
    config = resolve({}, {}, {"device": spec})
    assert config.device == path and config.sources["device"] == "flag"


def test_no_module_branches_on_a_type_name() -> None:
    """Each setting carries its parser and merge policy; code that asks "is this a list?" would let a
    new type of setting be handled wrongly in silence."""
    from pathlib import Path

    for path in (Path(__file__).parents[2] / "rollback").rglob("*.py"):
        text = path.read_text()
        for smell in (".label ==", ".label !=", 'kind == "', 'kind != "'):
            assert smell not in text, (path.name, smell)


def test_a_protect_entry_matching_the_targets_name_says_it_is_matched_by_its_last_name() -> None:
    """`--protect persist/root` said "the subvolume 'root' is in the protected list", which it is not:
    protect matches by the last name, at any depth (found by a layouts tester)."""
    with pytest.raises(ConfigError) as caught:
        resolve({}, {}, {"device": "/dev/x", "protect": ("persist/root",)})
    assert caught.value.code == "conflict"
    assert "has a protected name: 'root' (protect 'persist/root')" in caught.value.reason, caught.value.reason
    assert "by its last name, at any depth" in caught.value.hint


@pytest.mark.parametrize(
    ("file", "cmdline", "flags", "refused"),
    [
        ({"archive": "old", "keep-count": 3}, {"archive": ""}, {}, False),  # rollback.archive= at the boot menu
        ({"archive": "old", "keep-count": 3}, {}, {"archive": ""}, False),  # --archive '' by hand
        ({"keep-count": 3}, {}, {}, True),  # retention and no archive, in one place
        ({"archive": "", "keep-count": 3}, {}, {}, True),
        ({"archive": "old"}, {"archive": ""}, {"keep_count": 3}, True),  # retention set above the archive's off
    ],
)
def test_an_archive_turned_off_above_the_retention_settings_is_no_conflict(
    file: dict[str, Value], cmdline: dict[str, Value], flags: dict[str, Value], refused: bool
) -> None:
    """The file keeps old roots with keep-count; `rollback.archive=` at the boot menu, to keep none this
    once, was refused `conflict` (exit 2) at that boot (found by a settings tester)."""
    file_layer = {k.replace("-", "_"): v for k, v in file.items()}
    if refused:
        with pytest.raises(ConfigError) as caught:
            resolve(file_layer, cmdline, {"device": "/dev/x", **flags}, "/etc/rollback.toml")
        assert caught.value.code == "conflict"
    else:
        assert resolve(file_layer, cmdline, {"device": "/dev/x", **flags}, "/etc/rollback.toml").archive == ""


@pytest.mark.parametrize(
    ("setting", "value", "reason"),
    [
        ("subvolume", "a/../b", "bad-name"),  # no canonical spelling
        ("archive", ".rollback/x", "bad-name"),  # inside the state directory
        ("mode", "snap", "bad-choice"),
    ],
)
@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("file", "{key} in /etc/rollback.toml"),
        ("cmdline", "rollback.{key}= on the kernel command line"),
        ("flag", "--{key}"),
    ],
)
def test_a_bad_value_s_hint_names_the_setting_where_it_was_given(
    setting: str, value: str, reason: str, where: str, named: str
) -> None:
    """The hint said `fix --subvolume (from /etc/rollback.toml)`: a flag to someone who never passed
    one (a tester of settings changed between boots). It names the setting as it was given."""
    layers: dict[str, Layer] = {"file": {}, "cmdline": {}, "flag": {}}
    layers[where] = {setting: value}
    with pytest.raises(ConfigError) as raised:
        resolve(layers["file"], layers["cmdline"], layers["flag"], "/etc/rollback.toml")
    assert raised.value.code == reason
    assert raised.value.hint is not None and named.format(key=setting) in raised.value.hint, raised.value.hint
    assert (where == "flag") == ("--" in raised.value.hint), raised.value.hint


def test_a_bad_name_in_a_list_is_named_where_it_was_given() -> None:
    """protect = ["a/../b"] in the file with rollback.protect=srv on the kernel command line: the hint
    sent the user to the kernel command line, where the extended list's last part came from (a reviewer)."""
    with pytest.raises(ConfigError) as raised:
        resolve({"protect": ("a/../b",)}, {"protect": ("srv",)}, {}, "/etc/rollback.toml")
    assert raised.value.hint == "fix protect in /etc/rollback.toml", raised.value.hint
