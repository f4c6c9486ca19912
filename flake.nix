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
      packages = forAllSystems (pkgs: {
        default = pkgs.python3Packages.callPackage ./packaging/nix/package.nix { };
      });

      nixosModules.default = ./packaging/nix/module.nix;

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.system}.default;
        vm = import ./packaging/nix/test.nix { inherit pkgs self; };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
