# The smallest machine docs/nixos.md describes: a btrfs root replaced at every boot, /persist and
# /nix kept (nix is mounted in stage 1 by NixOS itself; persist needs neededForBoot).
{
  boot.initrd.systemd.enable = true;
  boot.rollback.enable = true;
  fileSystems = {
    "/" = {
      device = "/dev/disk/by-label/nixos";
      fsType = "btrfs";
      options = [
        "subvol=root"
        "compress=zstd"
      ];
    };
    "/persist" = {
      device = "/dev/disk/by-label/nixos";
      fsType = "btrfs";
      options = [ "subvol=persist" ];
      neededForBoot = true;
    };
    "/nix" = {
      device = "/dev/disk/by-label/nixos";
      fsType = "btrfs";
      options = [
        "subvol=nix"
        "noatime"
      ];
    };
  };
}
