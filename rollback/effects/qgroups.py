"""A subvolume's quota groups, read from the quota tree: what btrfsutil cannot give.

A new root is a new subvolume, with a new qgroup (0/<id>): neither the higher-level qgroups the old
root's was in (`btrfs qgroup assign 0/256 1/100`, a limit on 1/100 bounding the root) nor a limit on
its own qgroup carry over, and the plan does not carry them (the old root keeps its membership,
archived or in the trash, and would use up a shared limit): it says what is left behind. The items:
BTRFS_QGROUP_RELATION_KEY (child, 246, parent), stored both ways; a level-0 qgroup has no children,
so its own relation items name its parents; BTRFS_QGROUP_LIMIT_KEY (0, 244, qgroupid), whose first
field is the flags of the limits set.
"""

from __future__ import annotations

import struct

from rollback.effects import refs
from rollback.model import Quota

_QUOTA_TREE = 8
_STATUS, _INFO, _LIMIT, _RELATION = 240, 242, 244, 246
_MAX_RFER = 1  # BTRFS_QGROUP_LIMIT_MAX_RFER, in the limit item's flags


def enabled(fd: int) -> bool:
    """Whether the filesystem has quotas on (a quota tree with its status item)."""
    try:
        return bool(refs.items(fd, _QUOTA_TREE, 0, _STATUS))
    except FileNotFoundError:
        return False


def of(fd: int, subvolume: int) -> Quota:
    """The higher-level qgroups subvolume's own qgroup (0/<id>) is in, whether it has a limit, and whether
    what it references is at its referenced limit already (the limit item: flags, max_rfer, ...; the
    info item: generation, rfer, ...)."""
    parents = tuple(offset for offset, _ in refs.items(fd, _QUOTA_TREE, subvolume, _RELATION))
    limits = refs.items(fd, _QUOTA_TREE, 0, _LIMIT, (subvolume, subvolume))
    flags, max_rfer = struct.unpack_from("<QQ", limits[0][1]) if limits else (0, 0)
    over = False
    if flags & _MAX_RFER:
        info = refs.items(fd, _QUOTA_TREE, 0, _INFO, (subvolume, subvolume))
        over = bool(info) and struct.unpack_from("<QQ", info[0][1])[1] >= max_rfer
    return Quota(groups=parents, own_limit=bool(flags), referenced_over=over)
