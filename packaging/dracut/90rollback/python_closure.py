"""Stage the rollback service's Python import closure for an initramfs: one builder for dracut and NixOS.

Run with the interpreter that will run the service (the one that can import rollback and its
dependencies). It finds, statically, every module the service can import (error paths included,
unlike a sys.modules snapshot) and compiles each to sourceless bytecode (module.pyc where
module.py would be; unchecked-hash: valid whatever timestamps the copy gets; no source shipped).

    python_closure.py STAGE_DIR
        (dracut) bytecode under STAGE_DIR at each module's absolute path; prints what the dracut
        module installs itself:
            python <interpreter>      the real interpreter binary (dracut resolves its libraries)
            lib <extension module>    every C extension (dracut resolves their libraries)
            path <directory>          a sys.path entry outside the standard library

    python_closure.py --tree PREFIX --units UNITS_DIR [--destdir DIR] [--present STORE_PATH]...
        (NixOS) a self-contained tree at DIR/PREFIX that refers to nothing outside itself but the ELF
        libraries its binaries link: PREFIX/bin/python3 (the interpreter, which finds its stdlib
        beside itself), PREFIX/lib/pythonX.Y/ (stdlib and site-packages modules merged, extensions
        included), PREFIX/bin/rollback (launcher), PREFIX/bin/rollback-trigger, the units
        rollback@.service and rollback-early@.service in PREFIX/lib/systemd/system (their commands
        pointing into PREFIX), PREFIX/share/rollback/manifest.json. The staged
        interpreter then imports the service from the tree alone, or the build fails.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import marshal
import modulefinder
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from typing import Any

ENTRY_POINTS = [  # imported in this order by the checks: rollback.entry applies the deferrals first
    "rollback.entry",
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
    # shutil (argparse's, for the terminal width) tries them inside `except ImportError`; with libbz2
    # and liblzma they are 0.06 MB of the initramfs
    "bz2",
    "_bz2",
    "lzma",
    "_lzma",
    "_compression",
    # imported only inside `try: ... except ImportError` (or `except Exception`), where the importer
    # goes on without them: platform's macOS-only reader (after a check for a macOS file), warnings'
    # source-traceback hint, structlog's Twisted and greenlet support, Windows' codec. 0.02 MB
    "plistlib",
    "tracemalloc",
    "structlog.twisted",
    "structlog._greenlets",
    "encodings.mbcs",
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
    extensions: list[str] = []
    for path in sorted(os.path.realpath(p) for p in files.values()):
        if not path.endswith(".py"):
            extensions.append(path)
            continue
        # bytecode only, where the source would be (sourceless import): half the size, no source
        # lookups; tracebacks still name the original file (dfile), without its lines
        compile_to(path, root + path + "c", path)
    # the interpreter looks for lib-dynload below its own exec prefix to find it (in a venv,
    # sysconfig's platstdlib is the venv's, not the interpreter's: Debian 13 warned at every start)
    os.makedirs(root + _dynload(), exist_ok=True)
    return extensions, extra_entries(files)


def _dynload() -> str:
    """The interpreter's own lib-dynload (in a venv, sysconfig's platstdlib is the venv's)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return os.path.join(os.path.realpath(sys.base_exec_prefix), sys.platlibdir, version, "lib-dynload")


def extra_entries(files: dict[str, str]) -> list[str]:
    """The sys.path entries the closure needs beyond the standard library (site-packages, a source tree)."""
    stdlib = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    entries = {_sys_path_entry(name, os.path.realpath(path)) for name, path in files.items()}
    return sorted(e for e in entries if os.path.realpath(e) not in stdlib and "lib-dynload" not in e)


def compile_to(source: str, target: str, shown_as: str) -> None:
    """Sourceless bytecode at `target`; tracebacks name `shown_as` (where the module is, once installed).

    Without what the service never reads, a third of the bytecode (the initramfs 0.40 MB smaller,
    zstd): column positions (the script re-runs itself with -X no_debug_ranges; tracebacks keep
    their line numbers) and module and function docstrings. Class docstrings stay (a dataclass
    without one has it computed with inspect at import), and so do asserts (optimize=0, whatever the
    builder runs with)."""
    with open(source, "rb") as handle:
        data = handle.read()
    tree = ast.parse(data, shown_as)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if ast.get_docstring(node, False) is not None:
            node.body = node.body[1:] or [ast.Pass()]
    code = compile(ast.fix_missing_locations(tree), shown_as, "exec", dont_inherit=True, optimize=0)
    unchecked_hash = (0b01).to_bytes(4, "little")  # PEP 552: valid whatever timestamps the copy gets
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "wb") as handle:
        handle.write(importlib.util.MAGIC_NUMBER + unchecked_hash + importlib.util.source_hash(data))
        handle.write(marshal.dumps(code))


def _sys_path_entry(name: str, path: str) -> str:
    """The sys.path directory `name` was found in: strip the dotted name's own path parts."""
    depth = name.count(".") + (1 if os.path.basename(path).startswith("__init__.") else 0)
    directory = os.path.dirname(path)
    for _ in range(depth):
        directory = os.path.dirname(directory)
    return directory


# What each build check below runs after importing _IMPORTED: the run's own set-up, pystemd loaded
# the service's way (which at boot only warns if it fails: the journal and sd_notify would be lost),
# the sinks configured both ways, one event rendered.
_SET_UP = """
from rollback.effects import journal
journal.load()
import rollback.log
rollback.log.configure(journal=True, notify=True, console=False)
rollback.log.configure(journal=False, notify=False, console=True)
rollback.log.emit("started", "build check", device="/dev/null")
"""
# rollback.__main__ would run main(); pystemd is imported the service's way, by _SET_UP
_IMPORTED = [name for name in ENTRY_POINTS if name != "rollback.__main__" and not name.startswith("pystemd")]

# Run in a fresh interpreter: import every entry point, refusing any module file outside the closure,
# so imports made from C (invisible to the static scan) fail the build instead of the boot.
_VERIFY = (
    """
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
"""
    + _SET_UP
)


def hidden_import(files: dict[str, str], entries: list[str]) -> str:
    """The first module imported from outside the closure (an import made from C), or ''."""
    allowed = sorted(os.path.realpath(p) for p in files.values())
    argv = [sys.executable, "-I", "-S", "-c", _VERIFY, json.dumps(allowed), json.dumps(entries)]
    left_out = list(EXCLUDE)
    result = subprocess.run([*argv, json.dumps(_IMPORTED), json.dumps(left_out)], capture_output=True, text=True)
    if result.returncode == 3:
        return result.stdout.strip()
    if result.returncode != 0:
        raise SystemExit(f"python_closure.py: importing the closure failed:\n{result.stderr}")
    return ""


# --- the NixOS tree: self-contained, relocated -------------------------------------------------


def build_tree(files: dict[str, str], prefix: str, destdir: str, units: str, present: list[str]) -> dict[str, Any]:
    """Lay out the tree (see the module's docstring); return its manifest. Fails unless every store
    path the tree names is its own, one its binaries' RUNPATH leads to, or one `present` anyway."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    lib = f"{prefix}/lib/{version}"
    staged: dict[str, str] = {}
    for name, path in sorted(files.items()):
        path = os.path.realpath(path)
        entry = _sys_path_entry(name, path)
        where = f"{lib}/lib-dynload" if os.path.basename(entry) == "lib-dynload" else lib
        relative = os.path.relpath(path, entry)
        if relative.startswith("../"):
            raise SystemExit(f"python_closure.py: {name} ({path}) is not below its sys.path entry {entry}")
        target = f"{where}/{relative}"
        if path.endswith(".py"):
            compile_to(path, destdir + target + "c", target)
            target += "c"
        else:
            _copy(path, destdir + target, strip=True)
        staged[name] = target
    os.makedirs(f"{destdir}{lib}/lib-dynload", exist_ok=True)  # the exec-prefix landmark
    # the real interpreter, from the build's own configuration: sys.base_prefix may be an environment
    # whose bin/pythonX.Y is a wrapper exec'ing it (nixpkgs' withPackages since 2025-09)
    interpreter = os.path.realpath(f"{sysconfig.get_config_var('BINDIR')}/{version}")
    _copy(interpreter, f"{destdir}{prefix}/bin/python3", strip=True)
    libpython = _libpython(interpreter)
    if libpython:  # a shared libpython (Nix, pyenv): beside the interpreter, found through its RUNPATH
        _copy(libpython, f"{destdir}{prefix}/lib/{os.path.basename(libpython)}", strip=True)
    # no RUNPATH may name the interpreter's own directories (they are not in the initrd); the
    # interpreter finds libpython in the tree (absolute, as make-initrd-ng resolves it; $ORIGIN for a
    # staged copy not yet in place)
    old = {os.path.realpath(str(sysconfig.get_config_var(v))) for v in ("LIBDIR", "prefix")}
    shared = [f"{prefix}/lib/{os.path.basename(libpython)}"] if libpython else []
    for target in [f"{prefix}/bin/python3", *shared, *(t for t in staged.values() if not t.endswith(".pyc"))]:
        first = [f"{prefix}/lib", "$ORIGIN/../lib"] if target.endswith("/bin/python3") and libpython else []
        _runpath(destdir + target, first, old)
    _write(f"{destdir}{prefix}/bin/rollback", LAUNCHER.format(python=f"{prefix}/bin/python3"), 0o755)
    with open(f"{units}/rollback-trigger", encoding="utf-8") as handle:
        _write(f"{destdir}{prefix}/bin/rollback-trigger", handle.read(), 0o755)
    for name in ("rollback@.service", "rollback-early@.service"):
        _write(f"{destdir}{prefix}/lib/systemd/system/{name}", _unit(f"{units}/{name}", prefix))
    foreign = foreign_store_paths(destdir, prefix, [*present, str(sysconfig.get_config_var("prefix"))])
    if foreign:
        raise SystemExit(
            "python_closure.py: the tree names store paths the initrd would not hold:\n" + "\n".join(foreign)
        )
    manifest = {  # paths in the tree only: a source path here would be a reference Nix follows
        "modules": staged,
        "totals": {"modules": len(staged), "bytes": _size(f"{destdir}{prefix}")},
    }
    _write(f"{destdir}{prefix}/share/rollback/manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


STORE_PATH = re.compile(rb"/nix/store/[0-9a-z]{32}-[^/\x00\s\"'<>;:,)]*")
INTERPRETER_FILES = re.compile(r"/(bin/python3|lib/libpython[^/]*)$")


def foreign_store_paths(destdir: str, prefix: str, present: list[str]) -> list[str]:
    """`file: store path` for each store path a file of the tree names that make-initrd-ng would not
    copy: not the tree, not a directory a RUNPATH of the tree's binaries names (their libraries are
    copied from there), not one of `present`. The interpreter's own files may name its build prefix
    (`present`'s last entry, a getpath fallback that Nix blanks with remove-references-to)."""
    root = destdir + prefix
    files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
    allowed = {_store_root(prefix), *(_store_root(p) for p in present[:-1])}
    for path in files:
        allowed |= {_store_root(d) for d in _runpath_of(path)}
    found = []
    for path in sorted(files):
        with open(path, "rb") as handle:
            named = {_store_root(m.decode(errors="replace")) for m in STORE_PATH.findall(handle.read())}
        if INTERPRETER_FILES.search(path):
            named.discard(_store_root(present[-1]))
        found += [f"{path[len(destdir) :]}: {n}" for n in sorted(named - allowed)]
    return found


def _store_root(path: str) -> str:
    """/nix/store/<hash>-<name> of a path below it (the path itself otherwise)."""
    parts = path.split("/")
    return "/".join(parts[:4]) if path.startswith("/nix/store/") else path


def _runpath_of(path: str) -> list[str]:
    with open(path, "rb") as handle:
        if handle.read(4) != b"\x7fELF":
            return []
    found = subprocess.run(["patchelf", "--print-rpath", path], capture_output=True, text=True)
    return [d for d in found.stdout.strip().split(":") if d]


def _size(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(root) for f in names)


def _libpython(interpreter: str) -> str:
    """The shared libpython the interpreter links, or "" when it is linked in. Asked of the binary
    itself: Debian builds with Py_ENABLE_SHARED and ships libpython for embedders, yet its
    /usr/bin/python3.X links none (copying it would add 7.7 MB nothing loads)."""
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not name:
        return ""
    needed = subprocess.run(["patchelf", "--print-needed", interpreter], capture_output=True, text=True, check=True)
    if name not in needed.stdout.split():
        return ""
    return os.path.realpath(f"{sysconfig.get_config_var('LIBDIR')}/{name}")


def _runpath(binary: str, first: list[str], dropped: set[str]) -> None:
    """Set `binary`'s RUNPATH to `first`, then its own entries outside the `dropped` directories."""
    found = subprocess.run(["patchelf", "--print-rpath", binary], capture_output=True, text=True, check=True)
    entries = [d for d in found.stdout.strip().split(":") if d]
    kept = [d for d in entries if not any(_within(d, top) for top in dropped)]
    if first or kept != entries:
        subprocess.run(["patchelf", "--set-rpath", ":".join([*first, *kept]), binary], check=True)


def _within(path: str, top: str) -> bool:
    real = os.path.realpath(path)
    return real == top or real.startswith(top.rstrip("/") + "/")


LAUNCHER = """#!{python} -IS
import sys
sys.argv[0] = "rollback"
from rollback.entry import main
main()
"""


def _unit(path: str, prefix: str) -> str:
    """A unit with its commands pointing into the tree."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    moved = {"/usr/bin/rollback ": f"{prefix}/bin/rollback ", "/usr/lib/rollback/": f"{prefix}/bin/"}
    if "/usr/bin/rollback " not in text:
        raise SystemExit(f"python_closure.py: {path} does not run /usr/bin/rollback")
    for old, new in moved.items():
        text = text.replace(old, new)
    return text


def _copy(source: str, target: str, *, strip: bool = False) -> None:
    """A copy, executable; an ELF file without its symbols (pyenv's libpython: 23 MB, 4 MB stripped)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
    os.chmod(target, 0o755)
    if strip:
        subprocess.run(["strip", "--strip-unneeded", target], check=True)


def _write(target: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(target, mode)


# Run by the staged interpreter, isolated: it must find its stdlib beside itself and import the
# service, and everything the service uses, from the tree alone.
_TREE_CHECK = (
    """
import json, os, sys
root, names = sys.argv[1], json.loads(sys.argv[2])
assert os.path.realpath(sys.prefix) == os.path.realpath(root), (sys.prefix, root)
# the interpreter running is the tree's own, not something a wrapper there exec'ed
assert os.readlink("/proc/self/exe") == os.path.realpath(root + "/bin/python3"), os.readlink("/proc/self/exe")
for name in names:
    __import__(name)
"""
    + _SET_UP
    + """
outside = sorted(m.__file__ for m in list(sys.modules.values())
                 if getattr(m, "__file__", None) and not os.path.realpath(m.__file__).startswith(root + "/"))
print(json.dumps(outside))
"""
)


def check_tree(root: str, manifest: dict[str, Any]) -> None:
    result = subprocess.run(
        [f"{root}/bin/python3", "-I", "-S", "-c", _TREE_CHECK, os.path.realpath(root), json.dumps(_IMPORTED)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or json.loads(result.stdout or "null") != []:
        raise SystemExit(
            f"python_closure.py: the tree at {root} is not self-contained:\n{result.stdout}{result.stderr}"
        )


# The staged bytecode itself, run as the initramfs runs it: the boot path's imports and _SET_UP (the
# first check ran the sources). The initramfs holds the bytecode staged here and the C extensions
# listed for dracut: one finder looks up each module in those places only, in the path finder's
# order (package, extension, bytecode). Nothing is imported from a file before it is in place; what
# the interpreter itself loaded from this system at start-up (encodings) is run again from the
# stage. Arguments are joined with \x1f.
_STAGE_CHECK = (
    """
import sys, _imp
from _frozen_importlib import BuiltinImporter, FrozenImporter, module_from_spec
from _frozen_importlib_external import ExtensionFileLoader, SourcelessFileLoader, spec_from_file_location
from _frozen_importlib_external import _path_isfile, _path_join
root, paths, names, extensions = sys.argv[1], *(argument.split("\x1f") for argument in sys.argv[2:5])
class Staged:
    @staticmethod
    def find_spec(name, path=None, target=None):
        tail = name.rpartition(".")[2]
        for directory in paths if path is None else path:
            package = _path_join(root + directory, tail, "__init__.pyc")
            if _path_isfile(package):
                inside = [_path_join(directory, tail)]
                loader = SourcelessFileLoader(name, package)
                return spec_from_file_location(name, package, loader=loader, submodule_search_locations=inside)
            for suffix in _imp.extension_suffixes():
                where = _path_join(directory, tail + suffix)
                if where in extensions:
                    return spec_from_file_location(name, where, loader=ExtensionFileLoader(name, where))
            module = _path_join(root + directory, tail + ".pyc")
            if _path_isfile(module):
                return spec_from_file_location(name, module, loader=SourcelessFileLoader(name, module))
        return None
sys.meta_path[:] = [BuiltinImporter, FrozenImporter, Staged]
def from_files():
    return {n for n, m in sys.modules.items() if getattr(m, "__file__", None) and m.__loader__ is not FrozenImporter}
early = from_files()
for name in early:
    parent = name.rpartition(".")[0]
    spec = Staged.find_spec(name, sys.modules[parent].__path__ if parent else None)
    if spec is None:
        raise ImportError(f"{name} is imported at start-up but not staged")
    exec(spec.loader.get_code(name), module_from_spec(spec).__dict__)
for name in names:
    __import__(name)
"""
    + _SET_UP
    + """
staged = (SourcelessFileLoader, ExtensionFileLoader)
print("not staged:", *sorted(n for n in from_files() - early if not isinstance(sys.modules[n].__loader__, staged)))
"""
)


def check_stage(root: str, entries: list[str], extensions: list[str]) -> None:
    """Fail the build unless the staged bytecode runs the boot path's imports by itself."""
    paths = [os.path.realpath(sysconfig.get_paths()["stdlib"]), _dynload(), *entries]  # the launcher's order
    joined = ["\x1f".join(part) for part in (paths, _IMPORTED, extensions)]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", _STAGE_CHECK, root, *joined], capture_output=True, text=True
    )
    if result.returncode != 0 or result.stdout.splitlines()[-1:] != ["not staged:"]:
        raise SystemExit(f"python_closure.py: the staged bytecode does not run:\n{result.stdout}{result.stderr}")


def converged() -> tuple[dict[str, str], list[str]]:
    """The closure, grown by what C code imports until importing needs nothing else."""
    names = list(ENTRY_POINTS)
    for _ in range(50):
        files = closure(names)
        entries = extra_entries(files)
        missing = hidden_import(files, entries)
        if not missing:
            return files, entries
        names.append(missing)
    raise SystemExit("python_closure.py: the closure does not converge")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python_closure.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", nargs="?", metavar="STAGE_DIR", help="dracut: stage at absolute paths")
    parser.add_argument("--tree", metavar="PREFIX", help="NixOS: a self-contained tree at PREFIX")
    parser.add_argument("--units", metavar="UNITS_DIR", help="with --tree: the repository's units/")
    parser.add_argument("--destdir", default="", metavar="DIR", help="with --tree: write below DIR")
    parser.add_argument(
        "--present",
        action="append",
        default=[],
        metavar="STORE_PATH",
        help="with --tree: a store path the initrd holds anyway (the tree may name it)",
    )
    args = parser.parse_args(argv)
    if (args.stage is None) == (args.tree is None) or (args.tree is not None) != (args.units is not None):
        parser.error("give STAGE_DIR, or --tree PREFIX with --units UNITS_DIR")
    files, _ = converged()
    if args.tree is not None:
        manifest = build_tree(files, args.tree, args.destdir, args.units, args.present)
        check_tree(args.destdir + args.tree, manifest)
        print(json.dumps(manifest["totals"]))
        return 0
    extensions, entries = stage(files, args.stage)
    check_stage(args.stage, entries, extensions)
    print(f"python {os.path.realpath(sys.executable)}")
    for path in extensions:
        print(f"lib {path}")
    for entry in entries:
        print(f"path {entry}")
    return 0


if __name__ == "__main__":
    if "no_debug_ranges" not in sys._xoptions:  # compile without column positions (see compile_to)
        # -B: what the builder itself imports is not cached without columns for the host's later runs
        os.execv(sys.executable, [sys.executable, "-B", "-X", "no_debug_ranges", *sys.orig_argv[1:]])
    raise SystemExit(main(sys.argv[1:]))
