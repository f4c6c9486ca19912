# STAND-IN for the declarations the kit (../shared/nix: the systemd initrd) lacks: the running
# system's `systemd.services` (upstream: nixos/modules/system/boot/systemd.nix), typed with
# upstream's own stage-2 service type from the kit's systemd-types.nix, so what the module sets for
# the cleanup after boot (cleanup = "after-boot") is checked as NixOS would check it.
# (`systemd.packages` is declared by the kit's misc.nix.)
{ lib, utils, ... }:

{
  options.systemd.services = lib.mkOption {
    default = { };
    type = utils.systemdUtils.types.services;
    description = "Definition of systemd service units (the running system).";
  };
  # upstream: nixos/modules/config/system-path.nix
  options.environment.systemPackages = lib.mkOption {
    type = lib.types.listOf lib.types.package;
    default = [ ];
    description = "The packages in the system profile.";
  };
  # upstream: nixos/modules/system/etc/etc.nix (only `source` is set here)
  options.environment.etc = lib.mkOption {
    default = { };
    type = lib.types.attrsOf (lib.types.submodule { options.source = lib.mkOption { type = lib.types.path; }; });
  };
}
