"""Defer imports the boot path never uses: a module is registered at once, executed on first use.

The card's libraries import more than the boot path runs. structlog's package init imports every
processor and the stdlib integration (asyncio among them); pystemd's package init imports its
D-Bus layer and lxml, and pystemd.utils imports uuid (with platform) and shlex, although the
sd_journal_sendv and sd_notify bindings need none of them; dataclasses imports inspect (with
ast, dis, tokenize) for classes that lack a docstring, and ours all have one; pathlib imports
urllib.parse, which imports ipaddress for URLs with IPv6 hosts. Deferring them
changes nothing in behaviour, only in cost: the real module runs the first time one of its
attributes is used. (importlib.util.LazyLoader does not help here on 3.11: the import statement
itself reads __spec__._initializing from the module, which makes LazyLoader execute it.) A
deferred module that is absent, because the initramfs leaves it out, is a placeholder that raises
ImportError when used. ROLLBACK_EAGER_IMPORTS=1 turns deferral off (the benchmark compares both).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from importlib.machinery import ModuleSpec

STRUCTLOG_UNUSED = ("structlog", "asyncio")  # the package init; its core modules still import
PYSTEMD_UNUSED = ("pystemd", "uuid", "shlex")  # its package init; pystemd.journal and .daemon still import
# inspect: dataclasses', for classes without a docstring; ipaddress: urllib.parse's, which pathlib imports
BOOT_UNUSED = (*STRUCTLOG_UNUSED, *PYSTEMD_UNUSED, "inspect", "ipaddress")  # deferred by rollback.entry, first


# what the import system itself reads from a module: answering these must not execute it
_IMPORT_ATTRIBUTES = frozenset({"__spec__", "__path__", "__file__", "__loader__", "__package__", "__cached__"})


class _Deferred(types.ModuleType):
    """Executes the real module the first time an attribute it lacks is asked for."""

    def __getattr__(self, attribute: str) -> object:
        spec: ModuleSpec | None = self.__dict__.get("__spec__")
        if attribute in _IMPORT_ATTRIBUTES or self.__dict__.get("_loaded") or spec is None or spec.loader is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")
        self.__dict__["_loaded"] = True
        spec.loader.exec_module(self)
        return getattr(self, attribute)


class _Absent(types.ModuleType):
    def __getattr__(self, attribute: str) -> object:
        if attribute in _IMPORT_ATTRIBUTES:
            raise AttributeError(attribute)
        raise ImportError(f"{self.__name__} is not installed here (deferred by rollback.lazy)")


def defer(*names: str) -> None:
    if os.environ.get("ROLLBACK_EAGER_IMPORTS") == "1":
        return
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)  # top-level names: nothing is executed
        module: types.ModuleType = _Absent(name) if spec is None else _Deferred(name)
        module.__spec__ = spec
        if spec is not None:
            module.__loader__ = spec.loader
            module.__package__ = spec.parent if spec.submodule_search_locations is None else name
            if spec.has_location:
                module.__file__ = spec.origin
            if spec.submodule_search_locations is not None:
                module.__path__ = list(spec.submodule_search_locations)
        sys.modules[name] = module
