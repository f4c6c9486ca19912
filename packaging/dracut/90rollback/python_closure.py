"""Stage the rollback service's Python import closure for an initramfs.

Run with the interpreter that will run the service (the one that can import rollback and its
dependencies). It finds, statically, every module the service can import (error paths included,
unlike a sys.modules snapshot), compiles each to bytecode under STAGE at its absolute path, as a
sourceless module.pyc beside where module.py is (unchecked-hash: valid whatever timestamps the
copy gets; no source is shipped), and prints what the dracut module must install itself:

    python <interpreter>      the real interpreter binary (dracut resolves its libraries)
    lib <extension module>    every C extension (dracut resolves their libraries)
    path <directory>          a sys.path entry outside the standard library (site-packages, source)
"""

from __future__ import annotations

import importlib.util
import json
import modulefinder
import os
import py_compile
import subprocess
import sys
import sysconfig

ENTRY_POINTS = [
    "rollback.__main__",
    "rollback.cli",
    "rollback.verbs",
    "rollback.sources",
    "rollback.report",
    "rollback.effects.btrfs",
    "rollback.effects.device",
    "rollback.effects.mount",
    "rollback.effects.journal",
    "pystemd.journal",
    "pystemd.daemon",
    # what the interpreter itself needs at start-up without site
    "encodings.utf_8",
    "encodings.aliases",
    "encodings.ascii",
    "encodings.latin_1",
]
# Found by the static scan but never reached: development tools; what the service defers
# (rollback/lazy.py) from structlog's and pystemd's package inits; and modules no verb imports at
# runtime (measured by running every verb, refusals included) that would bring C libraries
# (libcrypto, libmpdec, libexpat) or large packages. Using one in the initramfs fails loudly.
EXCLUDE = (
    "tkinter",
    "test",
    "unittest",
    "pydoc",
    "idlelib",
    "lib2to3",
    "ensurepip",
    "distutils",
    "doctest",
    "asyncio",
    "pystemd.DBus",
    "pystemd.machine1",
    "pystemd.systemd1",
    "pystemd.base",
    "pystemd.dbuslib",
    "pystemd.__version__",
    "lxml",
    "ssl",
    "_ssl",
    "hashlib",
    "_hashlib",
    "email",
    "http",
    "xmlrpc",
    "multiprocessing",
    "concurrent",
    "tarfile",
    "zipfile",
    "csv",
    "_csv",
    "decimal",
    "_decimal",
    "pyexpat",
    "xml",
    "statistics",
    "urllib.request",
    "importlib.metadata",
    "unicodedata",  # 1.1 MB; only re's \N{...} escapes and idna use it
    "typing_extensions",  # only for older Pythons or type checkers
)


def search_path() -> list[str]:
    """sys.path, plus where rollback really is (an editable install is found by a meta path hook)."""
    spec = importlib.util.find_spec("rollback")
    if spec is None or not spec.origin:
        raise SystemExit("python_closure.py: this interpreter cannot import rollback")
    return [os.path.dirname(os.path.dirname(spec.origin)), *sys.path]


def closure(names: list[str]) -> dict[str, str]:
    finder = modulefinder.ModuleFinder(path=search_path(), excludes=list(EXCLUDE))
    for name in names:
        finder.import_hook(name)
    found = {name: getattr(module, "__file__", None) for name, module in finder.modules.items()}
    return {name: path for name, path in found.items() if path}  # builtins have no file


def stage(files: dict[str, str], root: str) -> tuple[list[str], list[str]]:
    stdlib = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    extensions: list[str] = []
    entries: set[str] = set()
    for name, path in sorted(files.items()):
        path = os.path.realpath(path)
        entry = _sys_path_entry(name, path)
        if entry and os.path.realpath(entry) not in stdlib and "lib-dynload" not in entry:
            entries.add(entry)
        if not path.endswith(".py"):
            extensions.append(path)
            continue
        # bytecode only, where the source would be (sourceless import): half the size, no source
        # lookups; tracebacks still name the original file (dfile), without its lines
        target = root + path + "c"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        py_compile.compile(
            path,
            cfile=target,
            dfile=path,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    # the interpreter looks for lib-dynload to find its exec prefix
    os.makedirs(root + os.path.realpath(sysconfig.get_paths()["platstdlib"]) + "/lib-dynload", exist_ok=True)
    return extensions, sorted(entries)


def _sys_path_entry(name: str, path: str) -> str | None:
    """The sys.path directory `name` was found in: strip the dotted name's own path parts."""
    depth = name.count(".") + (1 if os.path.basename(path).startswith("__init__.") else 0)
    directory = os.path.dirname(path)
    for _ in range(depth):
        directory = os.path.dirname(directory)
    return directory


# Run in a fresh interpreter: import every entry point, refusing any module file outside the closure,
# so imports made from C (invisible to the static scan) fail the build instead of the boot.
_VERIFY = """
import importlib.abc, importlib.machinery, json, os, sys
allowed, extra, names, left_out = (json.loads(a) for a in sys.argv[1:5])
sys.path += extra
class LeftOut(importlib.abc.Loader):
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ImportError(f"{module.__name__} is left out of the initramfs, but the service used it")
class OnlyTheClosure:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in left_out or name in left_out:
            return importlib.machinery.ModuleSpec(name, LeftOut(), is_package=True)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        origin = spec and spec.origin
        if origin and origin not in ("built-in", "frozen") and os.path.realpath(origin) not in allowed:
            print(name)
            sys.exit(3)
        return None
sys.meta_path.insert(0, OnlyTheClosure())
for name in names:
    __import__(name)
import rollback.log  # the run's own set-up: sinks and deferred imports, then one event rendered
rollback.log.configure(journal=True, notify=True, console=False)
rollback.log.configure(journal=False, notify=False, console=True)
rollback.log.emit("started", "closure check", device="/dev/null")
"""


def hidden_import(files: dict[str, str], entries: list[str]) -> str:
    """The first module imported from outside the closure (an import made from C), or ''."""
    allowed = sorted(os.path.realpath(p) for p in files.values())
    argv = [sys.executable, "-I", "-S", "-c", _VERIFY, json.dumps(allowed), json.dumps(entries)]
    # rollback.__main__ would run main(); pystemd is imported the service's way, by configure()
    importable = [name for name in ENTRY_POINTS if name != "rollback.__main__" and not name.startswith("pystemd")]
    left_out = list(EXCLUDE)
    result = subprocess.run([*argv, json.dumps(importable), json.dumps(left_out)], capture_output=True, text=True)
    if result.returncode == 3:
        return result.stdout.strip()
    if result.returncode != 0:
        raise SystemExit(f"python_closure.py: importing the closure failed:\n{result.stderr}")
    return ""


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python_closure.py STAGE_DIR", file=sys.stderr)
        return 2
    names = list(ENTRY_POINTS)
    for _ in range(50):  # add what C code imports until importing needs nothing else
        files = closure(names)
        extensions, entries = stage(files, sys.argv[1])
        missing = hidden_import(files, entries)
        if not missing:
            break
        names.append(missing)
    else:
        print("python_closure.py: the closure does not converge", file=sys.stderr)
        return 1
    print(f"python {os.path.realpath(sys.executable)}")
    for path in extensions:
        print(f"lib {path}")
    for entry in entries:
        print(f"path {entry}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
