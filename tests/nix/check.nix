# Evaluate machines with nixpkgs' real lib.evalModules, upstream's NixOS declarations (the kit in
# ../shared/nix: initrd.nix, systemd-lib.nix, filesystems.nix, ...) and packaging/nix/module.nix,
# and report what each machine's initrd would get. Used by tests/unit/test_nix.py:
#   nix-instantiate --eval --strict --json tests/nix/check.nix \
#     --argstr kit ../shared/nix --argstr nixpkgsLib <extracted nixpkgs-lib>/lib --argstr machines '{...}'
# `machines` is JSON: name -> a NixOS module as JSON, plus two keys of this harness:
#   "_imports": files under tests/nix to import as well (e.g. "machines/impermanence.nix"),
#   "_withoutModule": true to leave packaging/nix/module.nix out (what the machine was before).
# `corpus` (JSON, the same shape) only gets verdicts: whether evaluation refuses the machine (a failed
# assertion, or an error such as a value not of its option's type), and its /etc/rollback.toml if not.
# `nameCorpus` (JSON, a list of strings): packaging/nix/names.nix's verdict on each.
# Also: the flake's outputs over the stand-in nixpkgs, and the package's files (lib.fileset) and
# check-phase attributes. `--eval` builds nothing and writes nothing to a store.
{
  kit,
  nixpkgsLib,
  machines,
  corpus ? "{}",
  nameCorpus ? "[]",
}:

let
  kitDir = /. + kit;
  lib = import (kitDir + "/readfiletype-polyfill.nix") (/. + nixpkgsLib);
  pkgs = import ./stand-in-pkgs.nix { inherit lib; };
  upstream = map (f: kitDir + "/upstream/${f}.nix") [
    "misc"
    "assertions"
    "stage-1-neededForBoot"
    "filesystems"
    "initrd"
  ] ++ [ ./main-system-stand-in.nix ];
  args =
    { config, ... }:
    {
      _module.args = {
        inherit pkgs;
        utils = import (kitDir + "/upstream/utils.nix") { inherit lib config pkgs; };
      };
    };

  evaluate =
    machine:
    lib.evalModules {
      modules =
        upstream
        ++ [ args ]
        ++ lib.optional (!(machine._withoutModule or false)) ../../packaging/nix/module.nix
        ++ map (f: ./. + "/${f}") (machine._imports or [ ])
        ++ [
          (removeAttrs machine [
            "_imports"
            "_withoutModule"
          ])
        ];
    };

  facts =
    machine:
    let
      evaluated = evaluate machine;
      inherit (evaluated) config options;
      inherit (evaluated._module.args) pkgs utils;
      initrd = config.boot.initrd.systemd;
      build = config.system.build;
      # The module's own assertions, in order, whether or not it is enabled: each must fail somewhere.
      module = import ../../packaging/nix/module.nix { inherit config lib pkgs utils; };
      rollback = config.boot.rollback or { enable = false; };
      toml = initrd.contents."/etc/rollback.toml".source or null;
    in
    {
      options = lib.attrNames (options.boot.rollback or { });
      types = lib.mapAttrs (_: o: o.type.description or null) (options.boot.rollback or { });
      failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      ours = if machine._withoutModule or false then [ ] else map (a: a.assertion) (lib.head module.config.content.contents).assertions;
      inherit (config) warnings;
      toml = if toml == null then null else builtins.fromJSON toml.value;
      tree = if rollback.enable then toString rollback.initrdPackage else null;
      package = if rollback.enable then toString rollback.package else null;
      contents = lib.mapAttrs (_: c: toString c.source) initrd.contents;
      storePaths = map (p: toString p.source) initrd.storePaths;
      packages = map toString initrd.packages;
      wants = initrd.targets.initrd.wants;
      # What make-initrd-ng gets: each store path (or contents source) at its target (none without
      # the systemd initrd: the scripted stage 1 is not declared here).
      initrd = map (c: {
        source = toString c.source;
        target = c.target;
      }) (build.initialRamdisk.contents or [ ]);
      initrdDrv = build.initialRamdisk.drvPath or null;
      # The units as the module system made them, and generateUnits' script that lays them out as
      # /etc/systemd/system (the test runs it against a stand-in store to see the result).
      units = lib.mapAttrs (name: u: {
        inherit (u)
          overrideStrategy
          requiredBy
          wantedBy
          enable
          text
          ;
        out = u.unit.outPath;
        build = u.unit.buildCommand;
      }) initrd.units;
      # The running system's cleanup after boot (cleanup = "after-boot").
      system = {
        installed = map toString config.environment.systemPackages;
        packages = map toString config.systemd.packages;
        services = lib.mapAttrs (_: s: {
          inherit (s) overrideStrategy wantedBy;
          execStart = s.serviceConfig.ExecStart or null;
        }) config.systemd.services;
        etc = lib.mapAttrs (_: e: toString e.source) config.environment.etc;
      };
      unitsDir = {
        out = build.stage1Units.outPath or null;
        build = build.stage1Units.buildCommand or null;
      };
    };

  # Refused (a failed assertion or an evaluation error, which tryEval catches as module type errors
  # are thrown), else the config file it writes.
  verdict =
    machine:
    let
      inherit (evaluate machine) config;
      failed = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      toml = config.boot.initrd.systemd.contents."/etc/rollback.toml".source.value or null;
      tried = builtins.tryEval (builtins.deepSeq [ failed toml ] { inherit failed toml; });
    in
    if tried.success then
      {
        refused = tried.value.failed != [ ];
        inherit (tried.value) failed;
        toml = if tried.value.toml == null then null else builtins.fromJSON tried.value.toml;
      }
    else
      {
        refused = true;
        failed = null;
        toml = null;
      };

  # The flake's outputs over the stand-in nixpkgs (checks.vm's nodes are not evaluated: they need
  # nixpkgs' qemu-vm modules).
  flake =
    let
      nixpkgs = {
        inherit lib;
        legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: pkgs);
      };
      outputs = (import ../../flake.nix).outputs { inherit self nixpkgs; };
      self = outputs // {
        outPath = toString ../..;
      };
      names = lib.mapAttrs (_: lib.mapAttrs (_: drv: drv.name));
    in
    {
      packages = names outputs.packages;
      checks = names outputs.checks;
      formatter = lib.mapAttrs (_: drv: drv.name) outputs.formatter;
      module = outputs.nixosModules.default == ../../packaging/nix/module.nix;
    };

  # The package's source and check phase: the files lib.fileset selects (relative to the repository)
  # and what pytestCheckHook is told.
  package =
    let
      rollback = pkgs.python3Packages.callPackage ../../packaging/nix/package.nix { };
      root = toString ../..;
    in
    {
      files = map (f: lib.removePrefix "${root}/" (toString f)) (lib.fileset.toList rollback.fileset);
      inherit (rollback)
        name
        enabledTestPaths
        disabledTestPaths
        pythonRelaxDeps
        ;
    };
in
{
  machines = lib.mapAttrs (_: facts) (builtins.fromJSON machines);
  verdicts = lib.mapAttrs (_: verdict) (builtins.fromJSON corpus);
  names =
    let
      rule = import ../../packaging/nix/names.nix { inherit lib; };
    in
    map (value: {
      canonical = rule.canonical value;
      problem = rule.problem value;
    }) (builtins.fromJSON nameCorpus);
  inherit flake package;
  store = {
    systemd = toString pkgs.systemd;
    lndir = toString pkgs.buildPackages.xorg.lndir;
  };
}
