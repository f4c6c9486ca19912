# NixOS module: roll back the btrfs root subvolume in the systemd initrd, before sysroot.mount.
# Options mirror the CLI: they are built from settings.json, generated from rollback/settings.py.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  cfg = config.boot.rollback;
  settings = builtins.fromJSON (builtins.readFile ./settings.json);
  defaultOf = option: (lib.findFirst (s: s.option == option) null settings).default;

  typeOf =
    s:
    if s.choices != [ ] then
      lib.types.enum s.choices
    else if s.kind == "int" then
      lib.types.ints.unsigned
    else if s.kind == "bool" then
      lib.types.bool
    else if s.kind == "list" then
      lib.types.listOf lib.types.str
    else if s.default == null then
      lib.types.nullOr lib.types.str
    else
      lib.types.str;

  settingOptions = builtins.listToAttrs (
    map (s: {
      name = s.option;
      value = lib.mkOption {
        type = typeOf s;
        default = s.default;
        description = "${s.help} (`${s.key}` in rollback.toml, `rollback.${s.key}=` on the kernel command line).";
      };
    }) settings
  );

  rootFs = config.fileSystems."/" or null;
  device = if cfg.device != null then cfg.device else (if rootFs == null then null else rootFs.device);
  instance = "rollback@${utils.escapeSystemdPath device}.service";
  stopBoot = cfg.failurePolicy == "stop-boot";

  # What /etc/rollback.toml says in the initrd: the device, and every setting not at its default
  # (the CLI rejects, say, an explicit keep-days without archive; defaults need not be written).
  values = builtins.listToAttrs (
    map (s: {
      name = s.key;
      value = if s.option == "device" then device else cfg.${s.option};
    }) (builtins.filter (s: s.option == "device" || cfg.${s.option} != defaultOf s.option) settings)
  );
  configFile = (pkgs.formats.toml { }).generate "rollback.toml" values;

  subvolOf = fs: lib.findFirst (o: lib.hasPrefix "subvol=" o) null fs.options;
  usesSubvol = name: fs: lib.elem (subvolOf fs) [ "subvol=${name}" "subvol=/${name}" ];
  isProtected = fs: fs.fsType == "btrfs" && lib.any (p: usesSubvol p fs) cfg.protect;
  protectedNotNeeded = lib.filter (fs: isProtected fs && !(utils.fsNeededForBoot fs)) (
    lib.attrValues config.fileSystems
  );
in
{
  options.boot.rollback = settingOptions // {
    enable = lib.mkEnableOption "a clean btrfs root subvolume at every boot (rollback in the systemd initrd)";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.python3Packages.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.python3Packages.callPackage ./package.nix { }";
      description = "The rollback package.";
    };

    failurePolicy = lib.mkOption {
      type = lib.types.enum [
        "boot-on"
        "stop-boot"
      ];
      default = "boot-on";
      description = ''
        What a failed or refused rollback does. `boot-on`: log it and boot with yesterday's
        root (nothing lost, but dirty). `stop-boot`: sysroot.mount requires the rollback, so
        the root is never mounted dirty; the initrd enters emergency mode.
      '';
    };

    kernelCommandLine = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Honour `rollback.*` options on the kernel command line (e.g. `rollback.skip` from the boot menu).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = config.boot.initrd.systemd.enable;
        message = "boot.rollback needs the systemd initrd: set boot.initrd.systemd.enable = true.";
      }
      {
        assertion = rootFs != null && rootFs.fsType == "btrfs";
        message = "boot.rollback needs a btrfs root: fileSystems.\"/\".fsType must be \"btrfs\".";
      }
      {
        assertion = rootFs != null && usesSubvol cfg.subvolume rootFs;
        message = "boot.rollback replaces the subvolume `${cfg.subvolume}`: add \"subvol=${cfg.subvolume}\" to fileSystems.\"/\".options (or set boot.rollback.subvolume).";
      }
      {
        assertion = device != null;
        message = "boot.rollback: set boot.rollback.device (fileSystems.\"/\" has no device).";
      }
      {
        assertion = protectedNotNeeded == [ ];
        message = "boot.rollback: protected subvolumes must be mounted in the initrd: set neededForBoot = true on ${
          lib.concatMapStringsSep ", " (fs: "fileSystems.\"${fs.mountPoint}\"") protectedNotNeeded
        }.";
      }
      {
        assertion = cfg.archive != "" || (cfg.keepDays == defaultOf "keepDays" && cfg.keepCount == defaultOf "keepCount");
        message = "boot.rollback: keepDays/keepCount only apply when old roots are kept: set boot.rollback.archive.";
      }
      {
        assertion = !(lib.elem (lib.last (lib.splitString "/" cfg.subvolume)) cfg.protect);
        message = "boot.rollback: the target subvolume `${cfg.subvolume}` is in boot.rollback.protect; it would be refused at every boot.";
      }
    ];

    boot.initrd.systemd = {
      packages = [ cfg.package ]; # rollback@.service from units/, ExecStart pointing at the package
      storePaths = [ cfg.package ];
      contents =
        {
          "/etc/rollback.toml".source = configFile;
        }
        // lib.optionalAttrs stopBoot {
          "/etc/systemd/system/${instance}.d/stop-boot.conf".source =
            "${cfg.package}/share/rollback/rollback-stop-boot.conf";
          "/etc/systemd/system/sysroot.mount.d/rollback.conf".text = ''
            [Unit]
            Requires=${instance}
            After=${instance}
          '';
        }
        // lib.optionalAttrs (!cfg.kernelCommandLine) {
          "/etc/systemd/system/${instance}.d/no-kernel-cmdline.conf".text = ''
            [Service]
            ExecStart=
            ExecStart=${lib.getExe cfg.package} run --device /%I --kernel-cmdline /dev/null
          '';
        };
      targets.initrd.wants = [ instance ];
    };
  };
}
