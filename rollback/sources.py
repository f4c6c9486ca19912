"""Read the config file and the kernel command line into setting layers."""

from __future__ import annotations

import errno
import os
import stat

from rollback import names
from rollback.cmdline import split_cmdline
from rollback.errors import ConfigError
from rollback.settings import BY_KEY, CMDLINE_PREFIX, Layer, Merge, Value

INITRD_RELEASE = "/etc/initrd-release"  # systemd's mark of an initrd


def in_initrd() -> bool:
    return os.path.exists(INITRD_RELEASE)


def parse_cmdline(text: str) -> dict[str, Value]:
    """`rollback.<key>[=value]` words, `rd.rollback.<key>[=value]` alike (dracut users' spelling of an
    option for the initrd); `_` and `-` alike in the key, as systemd reads its own. Other words are none
    of our business.

    `rd.` is read outside the initrd too, unlike systemd's own `rd.` options: those configure the
    initrd's instance of a program apart from the running system's, while every verb of ours on the
    running system prepares, describes or finishes the boots' work. Ignored there, `status` hid what
    the next boot refuses or prunes, and `skip-next` marked a root the boot did not keep (a tester)."""
    layer: dict[str, Value] = {}
    for word in split_cmdline(text):
        option = word.removeprefix("rd.")
        if not option.startswith(CMDLINE_PREFIX):
            _refuse_a_look_alike(word)
            continue
        if any("\udc80" <= char <= "\udcff" for char in word):
            raise ConfigError(
                f"kernel command line: {names.shown(word)} is not UTF-8", "fix the boot entry", code="bad-encoding"
            )
        key, has_value, raw = option[len(CMDLINE_PREFIX) :].partition("=")
        setting = BY_KEY.get(key.replace("_", "-"))
        if setting is None:
            raise ConfigError(
                f"kernel command line: unknown option {names.shown(word)}",
                f"known: {', '.join(CMDLINE_PREFIX + k for k in BY_KEY)}",
                code="unknown-key",
            )
        if not has_value and setting.parser.bare is None:
            raise ConfigError(
                f"kernel command line: {names.shown(word)} needs a value", f"use {word}=VALUE", code="bad-value"
            )
        value = (
            setting.parser.text(raw, f"kernel command line {names.shown(word)}") if has_value else setting.parser.bare
        )
        if setting.merge is Merge.EXTEND and setting.name in layer:  # repeated: each adds
            previous = layer[setting.name]
            assert isinstance(previous, tuple) and isinstance(value, tuple)
            value = previous + value
        layer[setting.name] = value
    return layer


def _refuse_a_look_alike(word: str) -> None:
    """A word that is ours but for its spelling: capitals (Rollback.skip), an invisible character pasted
    with it (a byte-order mark, a zero-width space), another dot (U+2024). Taken for another program's,
    it was ignored, and rollback.skip with it: the root the user asked to keep was replaced (a tester of
    locales). systemd matches its own words so too, but a misspelt key of ours is refused (exit 2): so
    is this."""
    shown = "".join(char for char in word if char.isprintable()).lower()  # (invisible: format characters)
    shown = shown.strip(_QUOTES)
    name = CMDLINE_PREFIX.rstrip(".")
    for prefix in ("rd.", ""):
        rest = shown.removeprefix(prefix)
        if not rest.startswith(name) or len(rest) == len(name):
            continue
        after = rest[len(name) :]
        # another separator before a key of ours (rollback_skip, rollback=skip, rollbackskip), or no ASCII
        # one at all; not ZFS's rollback=1, nor another program's rollbackd=, rollback_x= (a reviewer)
        key = after.lstrip("-_=").partition("=")[0].replace("_", "-")
        if not _word_char(after[0]) or key in BY_KEY:
            raise ConfigError(
                f"kernel command line: {names.shown(word)} looks like a rollback option but is not spelt as one "
                "(rollback.KEY, lower case, nothing invisible in it)",
                "spell it as the README does (a word copied from a web page or a document can carry invisible "
                "characters or typographic dots)",
                code="unknown-key",
            )


_QUOTES = "'\"\u2018\u2019\u201c\u201d\u00ab\u00bb"  # around a word pasted from a document


def _word_char(char: str) -> bool:
    """A character another program's word can go on with after "rollback": rollbackd=, rollback_x."""
    return (char.isascii() and char.isalnum()) or char in "-_="


def read_cmdline(path: str) -> str:
    """The kernel command line's text, read once (settings and the hibernation check use it)."""
    try:
        raw = _read_config(path)  # bounded, and not a FIFO (--kernel-cmdline /dev/zero read for ever)
    except OSError as error:
        raise ConfigError(
            f"cannot read kernel command line {path}: {error.strerror}",
            "pass --kernel-cmdline /dev/null to ignore it",
            code="cmdline-unreadable",
        ) from None
    if b"\0" in raw:  # the kernel's is a C string: a file holding one is not a command line
        raise ConfigError(f"kernel command line {path} holds a NUL byte", code="bad-encoding")
    # a byte that is not UTF-8 in another program's word (root=LABEL=caf\xe9) is none of our business;
    # refused only in a word of ours (parse_cmdline), or rollback.skip could not get past it
    return raw.decode(errors="surrogateescape")


_CONFIG_MAX = 1 << 20  # a settings file is a few hundred bytes


def _read_config(path: str) -> bytes:
    """The file's bytes: not a FIFO (opening one without O_NONBLOCK waits for a writer, for ever),
    and of a sane size (/dev/zero would fill the memory; /dev/null is no settings)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISDIR(mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(_CONFIG_MAX + 1)
    finally:
        os.close(fd)
    if len(raw) > _CONFIG_MAX:
        raise OSError(errno.EFBIG, f"larger than {_CONFIG_MAX} bytes")
    return raw


def load_config_file(path: str | None, default: str) -> tuple[Layer, str]:
    """The file's layer and its name; an explicit path must exist, the default may not."""
    if path is None:
        if not os.path.lexists(default):  # a link to nowhere is a config not there yet, not no config
            return {}, default
        path = default
    import tomllib  # only when there is a file: a kernel-command-line-only setup never parses TOML

    raw = b""
    try:
        raw = _read_config(path)
        data = tomllib.loads(raw.decode())
    except FileNotFoundError:
        if os.path.islink(path):
            raise ConfigError(
                f"config file {path} is a symbolic link to {os.readlink(path)}, which does not exist",
                "mount what holds it (/persist?) or pass --config; the defaults would replace the root "
                "without the settings you wrote",
                code="config-unreadable",
            ) from None
        raise ConfigError(f"config file {path} does not exist", "check --config", code="config-unreadable") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}", code="config-unreadable") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        bom = raw.startswith(b"\xef\xbb\xbf")  # some Windows editors write it; TOML forbids it
        hint = "it begins with a byte order mark (BOM): save it as UTF-8 without one" if bom else ""
        raise ConfigError(f"config file {path} is not valid TOML: {error}", hint, code="bad-toml") from None
    except RecursionError:  # arrays or tables nested past the parser's depth: no setting is that deep
        raise ConfigError(f"config file {path} nests arrays or tables too deeply", code="bad-toml") from None
    layer: dict[str, Value] = {}
    for key, value in data.items():
        setting = BY_KEY.get(key)
        if setting is None:
            raise ConfigError(
                f"config file {path}: unknown key {names.shown(key)}", f"known: {', '.join(BY_KEY)}", code="unknown-key"
            )
        layer[setting.name] = setting.parser.toml(value, f"config file {path}: {key}")
    return layer, path
