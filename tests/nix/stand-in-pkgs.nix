# A stand-in for nixpkgs' `pkgs`, for evaluating (never building) the NixOS module with the real lib
# and upstream's option declarations (../shared/nix). Only what those files, packaging/nix/*.nix and
# flake.nix use. Every package is a real `derivation`, so store paths, string contexts and drvPaths
# are computed as Nix computes them (`nix-instantiate --eval` writes nothing); a builder that only
# says what it would do is enough, since nothing is built. What a test reads back: `buildCommand`,
# `text`, `value` (formats.toml's JSON) and `passthru`.
#
# It also warns where current nixpkgs warns, so that the test that evaluation prints no warning can
# fail: `pkgs.system` (renamed to stdenv.hostPlatform.system), `nixfmt-rfc-style` (now `nixfmt`),
# `pytestFlagsArray` (replaced by `pytestFlags` and `enabledTestPaths`).
{ lib }:

let
  system = "x86_64-linux";

  # stdenv.mkDerivation's shape: passthru and meta stay out of the derivation; overrideAttrs works.
  mkDerivation =
    attrs:
    let
      drv = derivation (
        {
          inherit system;
          builder = "/bin/sh";
          args = [
            "-c"
            "echo stand-in: not buildable >&2; exit 1"
          ];
        }
        // removeAttrs attrs [
          "passthru"
          "meta"
        ]
      );
    in
    drv
    // attrs.passthru or { }
    // {
      meta = attrs.meta or { };
      passthru = attrs.passthru or { };
      overrideAttrs = f: mkDerivation (attrs // f attrs);
    };

  package = name: extra: mkDerivation { inherit name; } // extra;

  runCommand =
    name: env: buildCommand:
    mkDerivation (env // { inherit name buildCommand; });

  writeText =
    name: text:
    runCommand name {
      inherit text;
      passAsFile = [ "text" ];
    } ''cp "$textPath" "$out"'';

  writeShellScriptBin =
    name: text:
    runCommand name {
      inherit text;
      passAsFile = [ "text" ];
      meta.mainProgram = name;
    } ''install -Dm755 "$textPath" "$out/bin/${name}"'';

  python3Packages = {
    callPackage = lib.callPackageWith (pkgs // python3Packages);

    # nixpkgs' mk-python-derivation: dependencies are propagated; the check hook's attributes stay
    buildPythonApplication =
      args:
      lib.warnIf (args ? pytestFlagsArray)
        "pytestFlagsArray is deprecated: use pytestFlags for flags and enabledTestPaths for test paths"
        (
          mkDerivation (
            removeAttrs args [ "dependencies" ]
            // {
              name = "${args.pname}-${args.version}";
              propagatedBuildInputs = args.dependencies or [ ];
            }
          )
        );

    setuptools = package "python3.13-setuptools-80.9.0" { };
    btrfsutil = package "python3.13-btrfsutil-6.17" { };
    pystemd = package "python3.13-pystemd-0.15.1" { };
    structlog = package "python3.13-structlog-25.4.0" { };
    pytestCheckHook = package "pytest-check-hook" { };
    pyfakefs = package "python3.13-pyfakefs-5.9.1" { };
    toPythonModule = drv: drv;
  };

  python3 = package "python3-3.13.5" {
    pkgs = python3Packages;
    pythonVersion = "3.13";
    sitePackages = "lib/python3.13/site-packages";
    withPackages = select: package "python3-3.13.5-env" { };
  };

  bash = package "bash-5.3" { };
  nixfmt = package "nixfmt-1.0.1" { };

  pkgs = {
    inherit
      lib
      runCommand
      writeText
      writeShellScriptBin
      python3
      python3Packages
      bash
      nixfmt
      ;
    stdenv.hostPlatform.system = system;
    system = lib.warn "'system' has been renamed to/replaced by 'stdenv.hostPlatform.system'" system;
    nixfmt-rfc-style = lib.warn "nixfmt-rfc-style is now the same as pkgs.nixfmt which should be used instead" nixfmt;

    callPackage = lib.callPackageWith pkgs;
    writeShellApplication =
      { name, text, ... }:
      writeShellScriptBin name text;
    buildEnv =
      {
        name,
        paths,
        pathsToLink ? [ ],
        postBuild ? "",
        ...
      }:
      runCommand name { inherit paths pathsToLink; } postBuild;
    formats.toml =
      { }:
      {
        # as nixpkgs: the value as JSON, turned into TOML by the builder
        generate =
          name: value:
          runCommand name {
            value = builtins.toJSON value;
            passAsFile = [ "value" ];
          } ''json2toml "$valuePath" "$out"'';
      };
    makeInitrdNG =
      {
        name,
        contents,
        strip ? true,
        ...
      }:
      mkDerivation {
        inherit name strip;
        contentsJSON = builtins.toJSON (map (c: { inherit (c) source target; }) contents);
        passthru = { inherit contents; };
      };
    testers.runNixOSTest = test: package "vm-test-run-${test.name}" { };

    bashInteractive = package "bash-interactive-5.3" { };
    runtimeShell = "${bash}/bin/bash";
    coreutils = package "coreutils-9.8" { };
    less = package "less-679" { };
    glibc = package "glibc-2.40" { };
    chroot-realpath = package "chroot-realpath" { };
    kmod-blacklist-ubuntu = package "kmod-blacklist-ubuntu" { };
    kmod-debian-aliases = package "kmod-debian-aliases" { };
    buildPackages.xorg.lndir = package "lndir-1.0.5" { };
    systemd = package "systemd-258" {
      kmod = package "kmod-34" { };
      util-linux = package "util-linux-2.41" { };
    };
    patchelf = package "patchelf-0.15.2" { };
    removeReferencesTo = package "remove-references-to" { };
    binutils = package "binutils-wrapper-2.44" { };
  };
in
pkgs
