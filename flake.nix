{
  description = "rollback: a clean btrfs root subvolume at every boot, safely";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          rollback = pkgs.python3Packages.callPackage ./packaging/nix/package.nix { };
        in
        {
          default = rollback;
          # what the NixOS module puts in the initrd (boot.rollback.initrdPackage)
          initrd = pkgs.callPackage ./packaging/nix/initrd-tree.nix { inherit rollback; };
        }
      );

      nixosModules.default = ./packaging/nix/module.nix;

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        initrd = self.packages.${pkgs.stdenv.hostPlatform.system}.initrd;
        vm = import ./packaging/nix/test.nix { inherit pkgs self; };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
