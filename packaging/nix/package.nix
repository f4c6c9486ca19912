# The rollback service as a Python application (python3Packages.callPackage ./package.nix { }).
{
  lib,
  buildPythonApplication,
  setuptools,
  btrfsutil,
  pystemd,
  structlog,
  pytestCheckHook,
  pyfakefs,
}:

let
  # What the build and its check phase see. tests/unit/test_nix.py runs the enabled tests on a copy
  # of exactly these files: a test that reads anything else fails there before it fails here.
  fileset = lib.fileset.unions [
    ../../pyproject.toml
    ../../README.md
    ../../LICENSE
    ../../rollback
    ../../units
    ../../tests/__init__.py
    ../../tests/conftest.py
    ../../tests/support # what the tests share (tests/unit imports the CLI invocation and the plan factory)
    ../../tests/unit
    # tests/unit/test_bench_report.py checks the benchmark's report logic (stdlib and btrfsutil only)
    ../../bench/__init__.py
    ../../bench/run.py
  ];
in
buildPythonApplication {
  pname = "rollback";
  version = "0.1.0";
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../..;
    inherit fileset;
  };

  build-system = [ setuptools ];
  # pyproject.toml caps btrfsutil below 6.14 for Debian 12's libbtrfsutil 6.2; nixpkgs' bindings
  # come from its own (newer) btrfs-progs, built against the matching library.
  pythonRelaxDeps = [ "btrfsutil" ];
  dependencies = [
    btrfsutil
    pystemd
    structlog
  ];

  # The pure tier runs in the sandbox; the loop-device and VM tiers need root and a kernel.
  nativeCheckInputs = [
    pytestCheckHook
    pyfakefs
  ];
  enabledTestPaths = [ "tests/unit" ];
  disabledTestPaths = [
    "tests/unit/test_quality.py" # ruff, mypy and systemd-analyze run in the project's CI
    "tests/unit/test_docs.py" # README is not part of the runtime
    "tests/unit/test_nix.py" # the packaging itself: needs nix-instantiate and ../shared/nix (CI)
    "tests/unit/test_dracut_module.py" # the dracut module (packaging/dracut) is not in this package
    "tests/unit/test_installer.py" # scripts/install (packaging/installer.py) is for dracut machines
  ];

  # units/ is the single source of truth for the unit; only the interpreter path changes.
  postInstall = ''
    install -Dm644 units/rollback@.service $out/lib/systemd/system/rollback@.service
    substituteInPlace $out/lib/systemd/system/rollback@.service \
      --replace-fail /usr/bin/rollback $out/bin/rollback
    install -Dm644 units/rollback-early@.service $out/lib/systemd/system/rollback-early@.service
    substituteInPlace $out/lib/systemd/system/rollback-early@.service \
      --replace-fail /usr/bin/rollback $out/bin/rollback
    install -Dm755 units/rollback-trigger $out/libexec/rollback/rollback-trigger
    substituteInPlace $out/lib/systemd/system/rollback@.service \
      --replace-fail /usr/lib/rollback/rollback-trigger $out/libexec/rollback/rollback-trigger
    install -Dm644 units/rollback-cleanup@.service $out/lib/systemd/system/rollback-cleanup@.service
    substituteInPlace $out/lib/systemd/system/rollback-cleanup@.service \
      --replace-fail /usr/bin/rollback $out/bin/rollback
    install -Dm644 units/rollback-stop-boot.conf $out/share/rollback/rollback-stop-boot.conf
    install -Dm644 units/rollback.catalog $out/lib/systemd/catalog/rollback.catalog
  '';

  passthru = { inherit fileset; };

  meta = {
    description = "A clean btrfs root subvolume at every boot, safely";
    license = lib.licenses.mit;
    mainProgram = "rollback";
    platforms = lib.platforms.linux;
  };
}
