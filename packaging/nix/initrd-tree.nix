# What the NixOS systemd initrd needs to run rollback, and nothing else, in one self-contained tree.
#
# make-initrd-ng copies the store paths it is given, the libraries their ELF files link (DT_NEEDED in
# DT_RUNPATH) and symlink targets; it follows no Nix reference (nixpkgs#309316). So the tree holds
# the interpreter, the stdlib and site-packages modules the service imports (sourceless bytecode,
# found by the same closure builder the dracut module uses), its C extensions, a launcher and the
# unit pointing at it. Every other store path it refers to must be an ELF library make-initrd-ng
# copies by itself (glibc, libbtrfsutil, libsystemd, libffi...): disallowedReferences enforces that
# no Python, site-packages or source path is left behind.
#
# Layout ($out):
#   bin/python3, lib/libpython*.so*     the interpreter (RUNPATH set to $out/lib by the builder)
#   bin/rollback                        launcher: #!$out/bin/python3 -IS
#   lib/pythonX.Y/...                   the import closure, stdlib and site-packages merged
#   bin/rollback-trigger                units/rollback-trigger (bash: the initrd's /bin/bash)
#   lib/systemd/system/rollback@.service, rollback-early@.service   from units/, commands in $out
#   share/rollback/manifest.json        what was staged (modules, extensions, sizes)
{
  lib,
  runCommand,
  python3,
  patchelf,
  binutils,
  removeReferencesTo,
  bash,
  rollback,
}:

let
  # The service's Python environment: rollback and what it propagates (btrfsutil, pystemd, structlog).
  env = python3.withPackages (_: [ (python3.pkgs.toPythonModule rollback) ]);
  builder = ../dracut/90rollback/python_closure.py;
  units = ../../units; # rollback@.service, rollback-early@.service, rollback-trigger
in
runCommand "rollback-initrd-${rollback.version}"
  {
    nativeBuildInputs = [
      patchelf # the interpreter's RUNPATH -> the libpython copied beside it
      binutils # strip: the copied ELF files without their symbols
      removeReferencesTo
    ];
    # Anything that make-initrd-ng would not copy: the build fails instead of the boot.
    disallowedReferences = [
      python3
      env
      rollback
    ]
    ++ rollback.propagatedBuildInputs or [ ];
    passthru = {
      inherit env;
      exe = "bin/rollback";
    };
    meta.description = "rollback's import closure for the NixOS systemd initrd";
  }
  ''
    # --present: upstream's systemd initrd holds "${bash}/bin" (subprocess.py names ${bash}/bin/sh);
    # the builder fails on any other store path that is not the tree or a RUNPATH's
    ${env}/bin/python3 ${builder} --tree "$out" --units ${units} --present ${bash} > staged
    # Only the interpreter's own files may name its build prefix: a getpath fallback (the stdlib is
    # found beside the executable, lib/pythonX.Y/os.pyc). Anything else left over fails the build.
    for file in "$out"/bin/python3 "$out"/lib/libpython*; do
      if [ -e "$file" ]; then remove-references-to -t ${python3} "$file"; fi
    done
  ''
