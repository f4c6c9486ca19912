# Evaluate packaging/nix/module.nix without nixpkgs (none offline): a stub of the few lib, pkgs and
# utils functions it uses. Used by tests/unit/test_nix.py with `nix-instantiate --eval --strict --json`.
# `json` describes the machine: { rollback = {...}; systemdInitrd = bool; fileSystems = {...}; }.
{ json }:

let
  machine = builtins.fromJSON json;
  lib = rec {
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption { default = false; description = name; };
    mkIf = condition: content: if condition then content else { };
    literalExpression = text: text;
    types = {
      enum = choices: { enum = choices; };
      ints.unsigned = "unsigned int";
      bool = "bool";
      listOf = type: "list of ${type}";
      nullOr = type: "null or ${type}";
      str = "str";
      package = "package";
    };
    filterAttrs =
      keep: set:
      builtins.listToAttrs (
        builtins.filter (kv: keep kv.name kv.value) (
          map (name: { inherit name; value = set.${name}; }) (builtins.attrNames set)
        )
      );
    findFirst =
      pred: default: list:
      let found = builtins.filter pred list; in if found == [ ] then default else builtins.head found;
    hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
    inherit (builtins) elem any filter attrValues;
    concatMapStringsSep = sep: f: list: builtins.concatStringsSep sep (map f list);
    last = list: builtins.elemAt list (builtins.length list - 1);
    splitString = sep: s: builtins.filter builtins.isString (builtins.split sep s);
    optionalAttrs = condition: set: if condition then set else { };
    getExe = package: "${package}/bin/rollback";
  };
  pkgs = {
    python3Packages.callPackage = _: _: "/nix/store/rollback";
    formats.toml = _: { generate = _: values: values; }; # the values themselves, to inspect
  };
  utils = {
    # enough of systemd-escape --path for the device names used here
    escapeSystemdPath =
      path: builtins.replaceStrings [ "/" ] [ "-" ] (builtins.substring 1 (builtins.stringLength path) path);
    fsNeededForBoot = fs: fs.neededForBoot or false || builtins.elem fs.mountPoint [ "/" "/nix" ];
  };

  module = import ../../packaging/nix/module.nix { inherit lib pkgs utils config; };
  defaults = builtins.mapAttrs (_: option: option.default) module.options.boot.rollback;
  config = {
    boot.rollback = defaults // machine.rollback;
    boot.initrd.systemd.enable = machine.systemdInitrd;
    fileSystems = builtins.mapAttrs (mountPoint: fs: { inherit mountPoint; } // fs) machine.fileSystems;
  };
  enabled = module.config;
in
{
  options = builtins.attrNames module.options.boot.rollback;
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) (enabled.assertions or [ ]));
  toml = enabled.boot.initrd.systemd.contents."/etc/rollback.toml".source or null;
  contents = builtins.attrNames (enabled.boot.initrd.systemd.contents or { });
  wants = enabled.boot.initrd.systemd.targets.initrd.wants or [ ];
}
