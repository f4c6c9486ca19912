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

buildPythonApplication {
  pname = "rollback";
  version = "0.1.0";
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../..;
    fileset = lib.fileset.unions [
      ../../pyproject.toml
      ../../README.md
      ../../LICENSE
      ../../rollback
      ../../units
      ../../tests/__init__.py
      ../../tests/conftest.py
      ../../tests/unit
    ];
  };

  build-system = [ setuptools ];
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
  pytestFlagsArray = [ "tests/unit" ];
  disabledTestPaths = [
    "tests/unit/test_quality.py" # ruff, mypy and systemd-analyze run in the project's CI
    "tests/unit/test_docs.py" # README is not part of the runtime
  ];

  # units/ is the single source of truth for the unit; only the interpreter path changes.
  postInstall = ''
    install -Dm644 units/rollback@.service $out/lib/systemd/system/rollback@.service
    substituteInPlace $out/lib/systemd/system/rollback@.service \
      --replace-fail /usr/bin/rollback $out/bin/rollback
    install -Dm644 units/rollback-stop-boot.conf $out/share/rollback/rollback-stop-boot.conf
    install -Dm644 units/rollback.catalog $out/lib/systemd/catalog/rollback.catalog
  '';

  meta = {
    description = "A clean btrfs root subvolume at every boot, safely";
    license = lib.licenses.mit;
    mainProgram = "rollback";
    platforms = lib.platforms.linux;
  };
}
