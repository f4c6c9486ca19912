# rollback/names.py's canonical() in Nix: the one spelling of a name below the btrfs top level, or
# what is wrong with it (its own words). tests/unit/test_nix.py feeds one corpus of names to both.
{ lib }:

let
  component = "[A-Za-z0-9_@+.-]+"; # names._COMPONENT
  nameMax = 255; # names.NAME_MAX (the component is ASCII: characters are bytes)
  pathLimit = 1024; # names.PATH_LIMIT
  partsOf = value: lib.filter (p: p != "" && p != ".") (lib.splitString "/" value);
  partProblem =
    part:
    if part == ".." then
      "has a '..' component (must stay below the top level)"
    else if builtins.match component part == null then
      "may only use ASCII letters, digits and _ @ + . - (separated by /)"
    else if builtins.stringLength part > nameMax then
      "has a component longer than ${toString nameMax} characters"
    else
      null;
in
rec {
  stateDir = ".rollback"; # rollback/model.py's STATE_DIR: no setting may name anything inside it

  problem =
    value:
    let
      parts = partsOf value;
      inPart = lib.findFirst (p: p != null) null (map partProblem parts);
    in
    if lib.hasPrefix "/" value then
      "is absolute (names are relative to the btrfs top level)"
    else if parts == [ ] then
      "names nothing below the top level"
    else if inPart != null then
      inPart
    else if builtins.stringLength (lib.concatStringsSep "/" parts) > pathLimit then
      "is longer than ${toString pathLimit} characters"
    else
      null;

  # null when the name has a problem
  canonical = value: if problem value == null then lib.concatStringsSep "/" (partsOf value) else null;

  isWithin = path: parent: path == parent || lib.hasPrefix "${parent}/" path;
  basename = path: lib.last (lib.splitString "/" path);
}
