"""One table of settings drives the flags, the TOML file, the kernel command line and the docs.

Precedence, highest first: command-line flags, kernel command line
(`rollback.<key>=`), config file, defaults.  `protect` is the exception,
because protection must never be removable by accident: the file's list
replaces the default list, and the kernel command line and flags add to it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, assert_never, get_args

from rollback import names
from rollback.errors import ConfigError
from rollback.model import STATE_DIR

Mode = Literal["recreate", "snapshot"]  # what the new root is: empty, or a snapshot of the blank
Cleanup = Literal["boot", "after-boot"]  # where old roots are deleted

Value = str | int | bool | tuple[str, ...] | None

DEFAULT_CONFIG = "/etc/rollback.toml"
DEFAULT_KERNEL_CMDLINE = "/proc/cmdline"
CMDLINE_PREFIX = "rollback."


class Merge(enum.Enum):
    """How a layer's value meets the one below it (the config file always replaces the default)."""

    REPLACE = "replace"  # the higher layer wins
    EXTEND = "extend"  # the kernel command line and flags add to what the file (or default) says


@dataclass(frozen=True)
class Parser:
    """How one type of value is read from each source: each setting carries its parser, and no
    module branches on a type name (ukify's config items carry theirs the same way)."""

    label: str  # in messages and settings.json: str, int, bool, list
    text: Callable[[str, str], Value]  # (the kernel command line's text, where) -> value
    toml: Callable[[object, str], Value]  # (a TOML value, where) -> value
    cli: Mapping[str, object]  # argparse keywords for its flag
    bare: Value = None  # a bare `rollback.KEY` (no `=`) means this; None: a value is needed
    from_cli: Callable[[Any], Value] = lambda value: value


def parse_bool(text: str, where: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise ConfigError(
        f"{where}: expected a boolean, got {names.shown(text)}",
        "use 1/0, yes/no, true/false or on/off",
        code="bad-value",
    )


_DECIMAL = re.compile(r"[+-]?[0-9]+")


def integer(text: str) -> int:
    """Decimal ASCII digits, with an optional sign: int() alone takes `5_0` (50) and other scripts'
    digits (`١٢`: 12), which nobody writing a number of days means. ValueError otherwise (argparse's
    type for numbers: its error says "invalid integer value")."""
    digits = text.strip(" \t\n")  # what int() would strip besides is not a number's
    if not _DECIMAL.fullmatch(digits):
        raise ValueError(text)
    return int(digits, 10)


def _integer(text: str, where: str) -> int:
    try:
        return integer(text)
    except ValueError:
        raise ConfigError(f"{where}: expected an integer, got {names.shown(text)}", code="bad-value") from None


def _typed(expected: type[str | int | bool], label: str) -> Callable[[object, str], Value]:
    def check(value: object, where: str) -> Value:
        if type(value) is not expected:  # bool is an int subclass: compare exactly
            raise ConfigError(f"{where}: expected {label}, got {type(value).__name__}", code="bad-value")
        assert isinstance(value, (str, int, bool))
        return value

    return check


def _string_list(value: object, where: str) -> Value:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: expected a list of strings", code="bad-value")


TEXT = Parser("str", lambda text, where: text, _typed(str, "str"), {"type": str})
INTEGER = Parser("int", _integer, _typed(int, "int"), {"type": integer})
BOOLEAN = Parser("bool", parse_bool, _typed(bool, "bool"), {"action": "store_const", "const": True}, bare=True)


def _names(text: str) -> tuple[str, ...]:
    """A comma-separated list, empty items dropped: the kernel command line's and each flag's."""
    return tuple(item for item in text.split(",") if item)


NAMES = Parser(
    "list",
    lambda text, where: _names(text),
    _string_list,
    {"action": "append"},
    from_cli=lambda given: tuple(item for value in given for item in _names(value)),
)


def _device(spec: str) -> str:
    from rollback import devspec

    return devspec.device_path(spec)


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: a flag, a TOML key and a kernel command line option."""

    name: str
    parser: Parser
    default: Value
    help: str
    choices: tuple[str, ...] = ()
    metavar: str = ""
    canonical: Callable[[str], str] | None = None  # the one spelling (ValueError: none), before any rule
    limits: tuple[int, int] | None = None  # inclusive range of an integer
    merge: Merge = Merge.REPLACE

    @property
    def key(self) -> str:
        """The TOML key, and the kernel command line key after `rollback.`."""
        return self.name.replace("_", "-")

    @property
    def flag(self) -> str:
        return "--" + self.key

    @property
    def path(self) -> bool:
        """A name below the top level (the state-directory and overlap rules apply)."""
        return self.canonical is names.canonical


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "device",
        TEXT,
        None,
        "the btrfs block device (e.g. /dev/disk/by-label/nixos, or UUID=/LABEL=/PARTUUID=/PARTLABEL=)",
        metavar="DEV",
        canonical=_device,
    ),
    Setting(
        "subvolume",
        TEXT,
        "root",
        "the root subvolume to replace, relative to the top level",
        metavar="NAME",
        canonical=names.canonical,
    ),
    Setting(
        "mode",
        TEXT,
        "recreate",
        "recreate: new empty subvolume; snapshot: writable snapshot of --blank",
        choices=get_args(Mode),
    ),
    Setting(
        "blank",
        TEXT,
        "root-blank",
        "read-only blank snapshot used by --mode snapshot",
        metavar="NAME",
        canonical=names.canonical,
    ),
    Setting(
        "archive",
        TEXT,
        "",
        "keep old roots in this directory instead of deleting them (empty: do not keep)",
        metavar="DIR",
        canonical=names.canonical,
    ),
    Setting(
        "keep_days",
        INTEGER,
        30,
        "prune archived roots older than N days, by their names' clock (0: no age limit)",
        metavar="N",
        limits=(0, 36500),
    ),
    Setting(
        "keep_count", INTEGER, 0, "keep at most N archived roots (0: no count limit)", metavar="N", limits=(0, 100000)
    ),
    Setting(
        "keep_min",
        INTEGER,
        3,
        "never prune the N newest archived roots for their age: a wrong clock cannot empty the archive "
        "(keep-count still applies)",
        metavar="N",
        limits=(0, 100000),
    ),
    Setting(
        "protect",
        NAMES,
        ("persist", "nix", "home"),
        "refuse if a subvolume with this name lies inside anything to be deleted (repeatable)",
        metavar="NAME",
        canonical=names.canonical,
        merge=Merge.EXTEND,
    ),
    Setting(
        "cleanup",
        TEXT,
        "boot",
        "where old roots are deleted: boot (the run's last step), or after-boot (`rollback cleanup`, the "
        "rollback-cleanup@ unit of the running system; a boot then deletes only what earlier boots left)",
        choices=get_args(Cleanup),
    ),
    Setting(
        "skip",
        BOOLEAN,
        False,
        "the run does nothing and exits 77 (the kernel command line's rollback.skip); status says so, other "
        "verbs ignore it",
    ),
    Setting(
        "ignore_hibernation",
        BOOLEAN,
        False,
        "roll back (and mount the filesystem, any verb) even when a hibernation image waits on the resume "
        "device (that session is lost)",
    ),
)
BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}
BY_KEY: Mapping[str, Setting] = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """The resolved settings of one run, and where each value came from."""

    device: str | None
    subvolume: str
    mode: Mode
    blank: str
    archive: str
    keep_days: int
    keep_count: int
    keep_min: int
    protect: tuple[str, ...]
    cleanup: Cleanup
    skip: bool
    ignore_hibernation: bool
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def keeping(self) -> bool:
        return bool(self.archive)

    @property
    def from_blank(self) -> bool:
        """The new root is a snapshot of the blank (else an empty subvolume)."""
        match self.mode:
            case "snapshot":
                return True
            case "recreate":
                return False
            case _:
                assert_never(self.mode)

    @property
    def deletes_at_boot(self) -> bool:
        """A run deletes what it moves to the trash (else `rollback cleanup` does, after boot)."""
        match self.cleanup:
            case "boot":
                return True
            case "after-boot":
                return False
            case _:
                assert_never(self.cleanup)

    def spelt(self, name: str) -> str:
        """How a hint names setting `name`: as it was given (spelt())."""
        return spelt(BY_NAME[name], self.sources.get(name, "default"))

    def require_device(self) -> str:
        if not self.device:
            raise ConfigError(
                "no device given",
                "pass --device DEV, rollback.device= or device = in the config file",
                code="device-unset",
            )
        return self.device


def spelt(setting: Setting, source: str) -> str:
    """How a hint names `setting`, whose value came from `source` (a flag, the kernel command line, the
    config file: the last one of an extended list's), or where to set it if it has its default. A hint
    saying `--subvolume` to someone whose value came from /etc/rollback.toml or rollback.subvolume= sent
    them looking for a flag (two testers)."""
    last = source.rpartition(" + ")[2]
    if last == "flag":
        return setting.flag
    if last == "kernel command line":
        return f"rollback.{setting.key}= on the kernel command line"
    if last == "default":
        return f"the {setting.key} setting (its default now)"
    return f"{setting.key} in {last}"


Layer = Mapping[str, Value]


def resolve(file_layer: Layer, cmdline_layer: Layer, flag_layer: Layer, file_name: str = "config file") -> Config:
    """Merge the layers by precedence and each setting's merge policy, canonicalise, then validate
    the result as a whole."""
    layers = (
        (file_name, file_layer, Merge.REPLACE),
        ("kernel command line", cmdline_layer, None),
        ("flag", flag_layer, None),
    )
    values: dict[str, Value] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        values[setting.name], sources[setting.name] = setting.default, "default"
        for label, layer, forced in layers:  # the file replaces even an extending setting's default
            if setting.name not in layer:
                continue
            value = _canonical(setting, layer[setting.name], label)  # each layer's: a hint names where it was given
            if (forced or setting.merge) is Merge.EXTEND:
                current = values[setting.name]
                assert isinstance(current, tuple) and isinstance(value, tuple)
                value = current + tuple(v for v in value if v not in current)
                label = f"{sources[setting.name]} + {label}"
            values[setting.name], sources[setting.name] = value, label
    config = Config(**values, sources=sources)  # type: ignore[arg-type]
    validate(config)
    return config


def _canonical(setting: Setting, value: Value, source: str) -> Value:
    """The setting's one spelling of its value (a name, a device); ConfigError if there is none."""
    if setting.canonical is None or value is None or (value == "" and setting.default == ""):  # "" archive: do not keep
        return value
    given = value if isinstance(value, tuple) else (value,)
    made: list[str] = []
    for one in given:
        assert isinstance(one, str)
        try:
            made.append(setting.canonical(one))
        except ValueError as error:  # the one value at fault, not the whole list
            raise ConfigError(
                f"{setting.key} {names.shown(one)} {error}", f"fix {spelt(setting, source)}", code="bad-name"
            ) from None
    return tuple(dict.fromkeys(made)) if isinstance(value, tuple) else made[0]


def validate(config: Config) -> None:
    """Rules about the values together; each name is already canonical (resolve)."""
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if setting.path:
            for path in value if isinstance(value, tuple) else (value,):
                if path and names.is_within(path, STATE_DIR):
                    raise ConfigError(
                        f"{setting.key} {path!r} is inside rollback's own state directory {STATE_DIR}",
                        f"choose a name outside {STATE_DIR}/ for {spelt(setting, config.sources[setting.name])}",
                        code="bad-name",
                    )
        if setting.limits and not setting.limits[0] <= value <= setting.limits[1]:
            low, high = setting.limits
            raise ConfigError(f"{setting.key} {value} is out of range", f"use {low} to {high}", code="bad-number")
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        if setting.choices and value not in setting.choices:
            raise ConfigError(
                f"{setting.key} {names.shown(str(value))} is not one of {', '.join(setting.choices)}",
                f"fix {spelt(setting, config.sources[setting.name])}",
                code="bad-choice",
            )
    for name in ("keep_days", "keep_count", "keep_min"):
        # an archive turned off above where retention was set (rollback.archive= at the boot menu, --archive ''
        # by hand, over the file's keep-count) is no conflict: this run keeps no root (found by a settings tester)
        off_above = _rank(config.sources["archive"]) > _rank(config.sources[name])
        if config.sources[name] != "default" and not config.archive and not off_above:
            raise ConfigError(
                f"{BY_NAME[name].key} is set but archive is not",
                f"set {config.spelt('archive')} to keep old roots, or drop {config.spelt(name)}",
                code="conflict",
            )
    _check_overlaps(config)


def _rank(source: str) -> int:
    """Where a value came from, by precedence: the default, the config file, the kernel command line, a flag."""
    return {"default": 0, "kernel command line": 2, "flag": 3}.get(source.rpartition(" + ")[2], 1)


def _check_overlaps(config: Config) -> None:
    """The target, the blank (snapshot mode) and the archive: none inside another."""
    named = {"subvolume": config.subvolume, "archive": config.archive}
    if config.from_blank:
        named["blank"] = config.blank
    pairs = [(a, b) for a in named for b in named if a < b and named[a] and named[b]]
    for a, b in pairs:
        if names.is_within(named[a], named[b]) or names.is_within(named[b], named[a]):
            raise ConfigError(
                f"{a} {named[a]!r} and {b} {named[b]!r} overlap",
                f"choose {a} and {b} so that neither lies inside the other",
                code="conflict",
            )
    protected = {names.basename(p) for p in config.protect}
    if names.basename(config.subvolume) in protected:
        given = [p for p in config.protect if names.basename(p) == names.basename(config.subvolume)]
        raise ConfigError(
            f"the subvolume {config.subvolume!r} has a protected name: {names.basename(config.subvolume)!r}"
            + (f" (protect {given[0]!r})" if given[0] != config.subvolume else ""),
            "protect matches a subvolume by its last name, at any depth: the target's name cannot be one",
            code="conflict",
        )
    if config.archive and names.basename(config.archive) in protected:
        raise ConfigError(
            f"the archive {config.archive!r} has a protected name",
            "archived roots would be moved into a protected subvolume, and any other subvolume there refused "
            "as foreign at every boot: choose another archive (e.g. old_roots, or persist/old_roots)",
            code="conflict",
        )


def describe(config: Config) -> list[tuple[str, str, str]]:
    """(key, value, source) rows for `rollback config`."""
    rows = []
    for setting in SETTINGS:
        value = getattr(config, setting.name)
        shown = ",".join(value) if isinstance(value, tuple) else ("" if value is None else str(value))
        rows.append((setting.key, shown, config.sources.get(setting.name, "default")))
    return rows


def as_dict(config: Config) -> dict[str, Value]:
    return {s.key: getattr(config, s.name) for s in SETTINGS}


def schema() -> list[dict[str, object]]:
    """The table as data, for packaging/nix/settings.json (the NixOS module builds its options from it)."""
    return [
        {
            "key": s.key,
            "option": s.key.split("-")[0] + "".join(part.title() for part in s.key.split("-")[1:]),
            "kind": s.parser.label,
            "default": list(s.default) if isinstance(s.default, tuple) else s.default,
            "choices": list(s.choices),
            "range": list(s.limits) if s.limits else None,  # an integer's, inclusive
            "name": s.path,  # a name below the top level: the name rule applies
            "help": s.help,
        }
        for s in SETTINGS
    ]


if __name__ == "__main__":
    import json

    print(json.dumps(schema(), indent=2))
