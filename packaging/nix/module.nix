# NixOS module: roll back the btrfs root subvolume in the systemd initrd, before sysroot.mount.
# Options mirror the CLI: they are built from settings.json, generated from rollback/settings.py.
#
# What goes into the initrd: /etc/rollback.toml and the tree of initrd-tree.nix (interpreter, the
# service's import closure, a launcher and rollback@.service pointing at it). make-initrd-ng copies
# store paths and the libraries their ELF files link, never Nix references, so the package itself
# (a wrapper around a Python environment) would not run there. Drop-ins go through
# boot.initrd.systemd.services with overrideStrategy = "asDropin": /etc/systemd/system is one
# read-only store path in the initrd, nothing can be added below it through `contents`.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:

let
  cfg = config.boot.rollback;
  tree = cfg.initrdPackage;
  settings = builtins.fromJSON (builtins.readFile ./settings.json);
  defaultOf = option: (lib.findFirst (s: s.option == option) null settings).default;
  names = import ./names.nix { inherit lib; };

  # the names below the top level (the name rule applies to each)
  nameOptions = map (s: s.option) (builtins.filter (s: s.name) settings);

  typeOf =
    s:
    if s.choices != [ ] then
      lib.types.enum s.choices
    else if s.kind == "int" then
      lib.types.ints.between (lib.head s.range) (lib.last s.range)
    else if s.kind == "bool" then
      lib.types.bool
    else if s.kind == "list" then
      lib.types.listOf lib.types.str
    else if s.default == null then
      lib.types.nullOr lib.types.str
    else
      lib.types.str;

  notes.device = ''
    Default (null): the device of the `fileSystems` entry mounted on `/`. A device path
    (`/dev/disk/by-label/nixos`) or an fstab tag: `UUID=`, `LABEL=`, `PARTUUID=`, `PARTLABEL=`
    become their `/dev/disk/by-*/` link, as systemd's fstab generator maps them, so that the
    unit waits for a `.device` unit that appears.
  '';
  settingOptions = builtins.listToAttrs (
    map (s: {
      name = s.option;
      value = lib.mkOption {
        type = typeOf s;
        default = s.default;
        description =
          "${lib.toUpper (builtins.substring 0 1 s.help)}${builtins.substring 1 (-1) s.help} "
          + "(`${s.key}` in rollback.toml, `rollback.${s.key}=` on the kernel command line)."
          + lib.optionalString (notes ? ${s.option}) "\n\n${notes.${s.option}}";
      };
    }) settings
  );

  # The root is the entry mounted on /, whatever its attribute name (fileSystems drops enable = false).
  refOf = name: "fileSystems.${lib.strings.escapeNixIdentifier name}";
  rootName = lib.findFirst (n: config.fileSystems.${n}.mountPoint == "/") null (
    lib.attrNames config.fileSystems
  );
  rootFs = if rootName == null then null else config.fileSystems.${rootName};
  rootRef = if rootName == null then ''fileSystems."/"'' else refOf rootName;

  # The device as written: boot.rollback.device, else the root's. NixOS turns `label = "x"` into an
  # fstab-escaped /dev/disk/by-label/ path (a space as \040); the label itself maps exactly.
  fstabEscape = builtins.replaceStrings [ " " "\t" ] [ "\\040" "\\011" ];
  spec =
    if cfg.device != null then
      cfg.device
    else if rootFs == null then
      null
    else if rootFs.label != null && rootFs.device == "/dev/disk/by-label/${fstabEscape rootFs.label}" then
      "LABEL=${rootFs.label}"
    else
      rootFs.device;
  specRef = if cfg.device != null then "boot.rollback.device" else "${rootRef}.device";

  # Every byte a Nix string can hold, with its value: ASCII from JSON escapes (NUL excepted), and the
  # bytes of UTF-8 sequences cut out of characters whose encoding begins or continues with them.
  hex2 = n: lib.fixedWidthString 2 "0" (lib.toLower (lib.toHexString n));
  hex4 = n: lib.fixedWidthString 4 "0" (lib.toLower (lib.toHexString n));
  char =
    cp:
    if cp < 65536 then
      builtins.fromJSON ''"\u${hex4 cp}"''
    else
      builtins.fromJSON ''"\u${hex4 (55296 + (cp - 65536) / 1024)}\u${
        hex4 (56320 + lib.mod (cp - 65536) 1024)
      }"'';
  byte =
    n:
    if n < 128 then
      char n
    else if n < 192 then
      builtins.substring 1 1 (char n) # U+0080..U+00BF: C2 n
    else if n < 224 then
      builtins.substring 0 1 (char ((n - 192) * 64))
    else if n < 240 then
      builtins.substring 0 1 (char ((n - 224) * 4096 + (if n == 224 then 2048 else 0)))
    else
      builtins.substring 0 1 (char ((n - 240) * 262144 + (if n == 240 then 65536 else 0)));
  bytes = lib.range 1 191 ++ lib.range 194 244; # C0, C1, F5-FF: never in UTF-8
  escapeBytes =
    keep: s:
    let
      escaped = lib.filter (n: !(keep n)) bytes;
    in
    builtins.replaceStrings (map byte escaped) (map (n: "\\x${hex2 n}") escaped) s;
  isAsciiIn = chars: n: n < 128 && lib.elem (byte n) (lib.stringToCharacters chars);
  alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

  # Tags as systemd's fstab generator maps them, the value escaped as udev names the link (the rules
  # of rollback/devspec.py, checked against it by tests/unit/test_nix.py): ASCII outside
  # [A-Za-z0-9#+-.:=@_] as \xNN, UTF-8 sequences kept.
  tagDirs = {
    UUID = "by-uuid";
    LABEL = "by-label";
    PARTUUID = "by-partuuid";
    PARTLABEL = "by-partlabel";
  };
  udevEscape = escapeBytes (n: n >= 128 || isAsciiIn "${alnum}#+-.:=@_" n);

  # `systemd-escape --path`, which utils.escapeSystemdPath is for ASCII; a byte outside ASCII, which
  # that keeps, makes a unit name systemd rejects (a label with a UTF-8 character). null when the
  # path is not normalized (a `..`).
  components = path: lib.filter (c: c != "" && c != ".") (lib.splitString "/" path);
  escapePath =
    path:
    let
      inner = lib.concatStringsSep "/" (components path);
      escape = s: builtins.replaceStrings [ "/" ] [ "-" ] (escapeBytes (isAsciiIn "${alnum}:_./") s);
    in
    if lib.elem ".." (components path) then
      null
    else if inner == "" then
      "-"
    else if lib.hasPrefix "." inner then
      "\\x2e" + escape (builtins.substring 1 (-1) inner)
    else
      escape inner;

  tag = if spec == null then null else lib.toUpper (lib.head (lib.splitString "=" spec));
  tagged = spec != null && lib.hasInfix "=" spec && tagDirs ? ${tag};
  tagValue = lib.removePrefix "${lib.head (lib.splitString "=" spec)}=" spec;
  devicePath =
    if spec == null then
      null
    else if tagged then
      (if tagValue == "" then null else "/dev/disk/${tagDirs.${tag}}/${udevEscape tagValue}")
    else if lib.hasPrefix "/" spec then
      spec
    else
      null;

  # The instance names the device: it waits for that device's own .device unit (systemd#24904).
  escapedDevice = if devicePath == null then null else escapePath devicePath;
  instance = "rollback@${escapedDevice}";
  stopBoot = cfg.failurePolicy == "stop-boot";
  # upstream initrd.nix: root has no password in the initrd's /etc/shadow unless this grants one
  emergencyAccess = config.boot.initrd.systemd.emergencyAccess;
  emergencyLocked = emergencyAccess == null || emergencyAccess == false;
  standby = "/run/rollback/standby/%i"; # where rollback-early@ waits for rollback@'s trigger

  # units/rollback-stop-boot.conf, the drop-in the dracut module installs, as [Unit] options (the
  # file has no other section; a test keeps the two equal).
  stopBootLines = lib.splitString "\n" (builtins.readFile ../../units/rollback-stop-boot.conf);
  stopBootUnit =
    assert lib.all (line: !(lib.hasPrefix "[" line) || line == "[Unit]") stopBootLines;
    builtins.listToAttrs (
      map (kv: lib.nameValuePair (lib.head kv) (lib.elemAt kv 1)) (
        lib.filter (kv: kv != null) (map (builtins.match "([A-Za-z]+)=(.*)") stopBootLines)
      )
    );

  # What /etc/rollback.toml says in the initrd: the device, and every setting not at its default
  # (the CLI rejects, say, an explicit keep-days without archive; defaults need not be written).
  values = builtins.listToAttrs (
    map (s: {
      name = s.key;
      value = if s.option == "device" then devicePath else cfg.${s.option};
    }) (builtins.filter (s: s.option == "device" || cfg.${s.option} != defaultOf s.option) settings)
  );
  configFile = (pkgs.formats.toml { }).generate "rollback.toml" values;

  # Names as the CLI reads them: each given name with its problem (archive "" is "do not keep"), and
  # the canonical spelling of the good ones (null for a bad one).
  given = lib.concatMap (o: map (value: { inherit o value; }) (lib.toList cfg.${o})) nameOptions;
  problemOf =
    value:
    let
      path = names.canonical value;
    in
    if path == null then
      names.problem value
    else if names.isWithin path names.stateDir then
      "is inside rollback's own state directory ${names.stateDir}: choose a name outside it"
    else
      null;
  badNames = lib.filter (n: n.problem != null) (
    map (n: n // { problem = problemOf n.value; }) (lib.filter (n: n != { o = "archive"; value = ""; }) given)
  );
  subvolume = names.canonical cfg.subvolume;
  protected = lib.filter (p: p != null) (map names.canonical cfg.protect);

  # The target, the archive and (snapshot mode) the blank: none inside another, as the CLI checks.
  placed = lib.filterAttrs (_: path: path != null) (
    {
      inherit subvolume;
    }
    // lib.optionalAttrs (cfg.archive != "") { archive = names.canonical cfg.archive; }
    // lib.optionalAttrs (cfg.mode == "snapshot") { blank = names.canonical cfg.blank; }
  );
  overlaps = lib.filter (pair: pair != null) (
    lib.concatMap (
      a:
      map (
        b:
        if a < b && (names.isWithin placed.${a} placed.${b} || names.isWithin placed.${b} placed.${a}) then
          "${a} \"${placed.${a}}\" and ${b} \"${placed.${b}}\""
        else
          null
      ) (lib.attrNames placed)
    ) (lib.attrNames placed)
  );

  optionsOf = fs: lib.concatMap (lib.splitString ",") fs.options; # an entry may hold "a,b"
  subvolOf = fs: lib.findFirst (o: lib.hasPrefix "subvol=" o) null (optionsOf fs);
  usesSubvol = name: fs: lib.elem (subvolOf fs) [
    "subvol=${name}"
    "subvol=/${name}"
  ];
  # A protected subvolume rollback meets is on the root's filesystem: only entries on the root's
  # device (as spelled there) count; `subvol=home` on another disk is another filesystem's.
  onRootDevice = fs: rootFs != null && fs.device != null && fs.device == rootFs.device;
  isProtected = fs: fs.fsType == "btrfs" && onRootDevice fs && lib.any (p: usesSubvol p fs) protected;
  protectedNotNeeded = lib.attrNames (
    lib.filterAttrs (_: fs: isProtected fs && !(utils.fsNeededForBoot fs)) config.fileSystems
  );
  retention = [
    "keepDays"
    "keepCount"
    "keepMin"
  ];
  retentionSet = lib.filter (o: cfg.${o} != defaultOf o) retention;
in
{
  options.boot.rollback = settingOptions // {
    enable = lib.mkEnableOption "a clean btrfs root subvolume at every boot (rollback in the systemd initrd)";

    package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.python3Packages.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.python3Packages.callPackage ./package.nix { }";
      description = "The rollback package, from which the initrd tree (`initrdPackage`) is built.";
    };

    initrdPackage = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      default = pkgs.callPackage ./initrd-tree.nix { rollback = cfg.package; };
      defaultText = lib.literalExpression "pkgs.callPackage ./initrd-tree.nix { rollback = config.boot.rollback.package; }";
      description = ''
        What the initrd gets (read-only): the interpreter, the modules the service imports, a
        launcher and rollback@.service, in one store path that needs nothing else.
      '';
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
        the root is never mounted dirty; the initrd enters emergency mode, which root can enter
        only with boot.initrd.systemd.emergencyAccess set (warned when it is not).
      '';
    };

    kernelCommandLine = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Honour `rollback.*` options on the kernel command line (e.g. `rollback.skip` from the boot menu).";
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = config.boot.initrd.systemd.enable;
            message = "boot.rollback needs the systemd initrd: set boot.initrd.systemd.enable = true.";
          }
          {
            assertion = rootFs != null && rootFs.fsType == "btrfs";
            message =
              if rootFs == null then
                "boot.rollback needs a btrfs root: no fileSystems entry has mountPoint = \"/\"."
              else
                "boot.rollback needs a btrfs root: ${rootRef}.fsType must be \"btrfs\".";
          }
          {
            assertion = subvolume == null || (rootFs != null && usesSubvol subvolume rootFs);
            message = "boot.rollback replaces the subvolume `${subvolume}`: add \"subvol=${subvolume}\" to ${rootRef}.options (or set boot.rollback.subvolume).";
          }
          {
            assertion = rootFs == null || !(lib.any (lib.hasPrefix "subvolid=") (optionsOf rootFs));
            message = "boot.rollback: remove subvolid= from ${rootRef}.options: every boot replaces `${cfg.subvolume}` with a new subvolume, whose id is another, so from the second boot on sysroot.mount fails (\"subvol '${cfg.subvolume}' does not match subvolid\"); subvol=${cfg.subvolume} alone names it.";
          }
          {
            assertion = spec != null;
            message = "boot.rollback: set boot.rollback.device (${rootRef} has no device).";
          }
          {
            assertion = spec == null || devicePath != null;
            message =
              if tagged then
                "boot.rollback: ${specRef} = \"${spec}\" names no ${tag}: write ${tag}=<value>."
              else
                "boot.rollback: ${specRef} = \"${spec}\" is neither a device path nor a tag: write /dev/disk/by-label/<label>, /dev/disk/by-uuid/<uuid> or any /dev path, or UUID=, LABEL=, PARTUUID=, PARTLABEL=.";
          }
          {
            assertion = devicePath == null || escapedDevice != null;
            message = "boot.rollback: ${specRef} = \"${spec}\" is not a normalized path: write it without `..`.";
          }
          {
            assertion = protectedNotNeeded == [ ];
            message = "boot.rollback: protected subvolumes must be mounted in the initrd: set neededForBoot = true on ${
              lib.concatMapStringsSep ", " refOf protectedNotNeeded
            }.";
          }
          {
            assertion = cfg.archive != "" || retentionSet == [ ];
            message = "boot.rollback: ${
              lib.concatStringsSep ", " retentionSet
            } only apply when old roots are kept: set boot.rollback.archive.";
          }
          {
            assertion = badNames == [ ];
            message = "boot.rollback: ${
              lib.concatMapStringsSep "; " (n: "${n.o} = ${builtins.toJSON n.value} ${n.problem}") badNames
            }. Names are relative to the btrfs top level: letters, digits and _ @ + . -, separated by /.";
          }
          {
            assertion = overlaps == [ ];
            message = "boot.rollback: ${lib.concatStringsSep ", " overlaps} overlap: choose them so that neither lies inside the other (the CLI refuses it at every boot).";
          }
          {
            assertion = subvolume == null || !(lib.elem (names.basename subvolume) (map names.basename protected));
            message = "boot.rollback: the target subvolume `${subvolume}` is in boot.rollback.protect; it would be refused at every boot.";
          }
        ];

        warnings = lib.optional (stopBoot && emergencyLocked) (
          "boot.rollback.failurePolicy = \"stop-boot\": a failed or refused rollback stops the boot in "
          + "the initrd's emergency mode, but boot.initrd.systemd.emergencyAccess is ${builtins.toJSON emergencyAccess}, "
          + "so root cannot log in there. Set boot.initrd.systemd.emergencyAccess = true (no password) or to a "
          + "hashed password (mkpasswd -m sha-512). Otherwise the only way on is "
          + (
            if cfg.kernelCommandLine then
              "rollback.skip on the kernel command line, or an older generation from the boot menu."
            else
              "an older generation from the boot menu (kernelCommandLine = false: rollback.skip is ignored)."
          )
        );

        boot.initrd.systemd = lib.mkIf (escapedDevice != null) {
          packages = [ tree ]; # rollback@.service, ExecStart=${tree}/bin/rollback
          storePaths = [ tree ];
          contents."/etc/rollback.toml".source = configFile;
          # Wanted by name: systemd instantiates the template; a services entry is only for drop-ins.
          targets.initrd.wants = [ "${instance}.service" ];
          # A device named apart from the root's (boot.rollback.device): its unit waits without a job
          # timeout, not systemd's default 90 s (a LUKS passphrase typed later failed the unit); one that
          # never appears holds the boot: the previous generation is the way out (docs/nixos.md).
          units = lib.optionalAttrs (cfg.device != null) {
            "${escapedDevice}.device" = {
              overrideStrategy = "asDropin";
              text = "[Unit]\nJobTimeoutSec=infinity\nJobRunningTimeoutSec=infinity\n";
            };
          };
          services =
            lib.optionalAttrs (stopBoot || !cfg.kernelCommandLine) {
              ${instance} = {
                overrideStrategy = "asDropin"; # <instance>.service.d/overrides.conf; the template stays
                requiredBy = lib.optional stopBoot "sysroot.mount"; # the unit is already Before= it
                unitConfig = lib.optionalAttrs stopBoot stopBootUnit;
                serviceConfig = lib.optionalAttrs (!cfg.kernelCommandLine) {
                  ExecStart = [
                    ""
                    "${tree}/bin/rollback-trigger ${standby} ${tree}/bin/rollback run --device /%I --kernel-cmdline /dev/null"
                  ];
                };
              };
            }
            # the early process runs the same command line (rollback@ only triggers it)
            // lib.optionalAttrs (!cfg.kernelCommandLine) {
              "rollback-early@${escapedDevice}" = {
                overrideStrategy = "asDropin";
                serviceConfig.ExecStart = [
                  ""
                  "${tree}/bin/rollback standby ${standby} run --device /%I --kernel-cmdline /dev/null"
                ];
              };
            };
        };
      }
      # The running system: the CLI the docs use (status, diff, skip-next, config), reading the
      # settings the initrd has (one configFile for both).
      (lib.mkIf (escapedDevice != null) {
        environment.systemPackages = [ cfg.package ];
        environment.etc."rollback.toml".source = configFile;
      })
      # cleanup = "after-boot": the running system deletes the trash at idle priority (the boot only
      # renames and creates); the package's rollback-cleanup@.service, instance wanted by multi-user.
      (lib.mkIf (cfg.cleanup == "after-boot" && escapedDevice != null) {
        systemd.packages = [ cfg.package ];
        systemd.services."rollback-cleanup@${escapedDevice}" = {
          overrideStrategy = "asDropin";
          wantedBy = [ "multi-user.target" ];
          serviceConfig = lib.optionalAttrs (!cfg.kernelCommandLine) {
            ExecStart = [
              ""
              "${lib.getExe cfg.package} cleanup --device /%I --kernel-cmdline /dev/null"
            ];
          };
        };
      })
    ]
  );
}
