# NixOS VM test (nixpkgs conventions): write to / and /persist, reboot, the first is gone, the
# second kept, and the journal has the rollback's entries. Needs Nix and KVM: `nix flake check`.
{ pkgs, self }:

pkgs.testers.runNixOSTest {
  name = "rollback";

  nodes.machine =
    { lib, pkgs, ... }:
    {
      imports = [ self.nixosModules.default ];
      virtualisation = {
        emptyDiskImages = [ 1024 ];
        useBootLoader = true;
        useEFIBoot = true;
        mountHostNixStore = true; # the new root is empty: the store comes from the host
      };
      boot.loader.systemd-boot.enable = true;
      boot.loader.efi.canTouchEfiVariables = true;
      boot.initrd.systemd = {
        enable = true;
        emergencyAccess = true;
      };
      environment.systemPackages = [ pkgs.btrfs-progs ];

      # Booted from the btrfs disk once the test script has prepared it.
      specialisation.ephemeral.configuration = {
        virtualisation.rootDevice = "/dev/vdb";
        virtualisation.fileSystems = {
          "/" = lib.mkForce {
            device = "/dev/vdb";
            fsType = "btrfs";
            options = [ "subvol=root" ];
          };
          "/persist" = {
            device = "/dev/vdb";
            fsType = "btrfs";
            options = [ "subvol=persist" ];
            neededForBoot = true;
          };
        };
        boot.rollback = {
          enable = true;
          device = "/dev/vdb";
          # the drop-in path (asDropin, sysroot.mount.requires): a failed rollback would stop this boot
          failurePolicy = "stop-boot";
        };
      };
    };

  testScript = ''
    finished = "15172a831c89420d9344be4f4585af9d"

    machine.wait_for_unit("multi-user.target")
    machine.succeed("mkfs.btrfs /dev/vdb")
    machine.succeed("mkdir -p /mnt && mount /dev/vdb /mnt")
    machine.succeed("btrfs subvolume create /mnt/root && btrfs subvolume create /mnt/persist")
    machine.succeed("umount /mnt")
    machine.succeed("bootctl set-default nixos-generation-1-specialisation-ephemeral.conf")
    machine.succeed("sync")
    machine.crash()

    machine.wait_for_unit("multi-user.target")
    assert "(initrd)" in machine.succeed("systemd-analyze")
    machine.succeed(f"journalctl -b -o json MESSAGE_ID={finished} | grep ROLLBACK_DEVICE")
    machine.succeed("echo cruft > /cruft && echo kept > /persist/kept && sync")
    machine.shutdown()

    machine.start()
    machine.wait_for_unit("multi-user.target")
    machine.fail("test -e /cruft")
    assert machine.succeed("cat /persist/kept").strip() == "kept"
    machine.succeed(f"journalctl -b -o json MESSAGE_ID={finished} | grep '\"ROLLBACK_DELETED\"'")
    machine.succeed("journalctl -b -u 'rollback@*' | grep 'root replaced'")
  '';
}
