"""Every subvolume's name and parent, read from the filesystem's root tree: what btrfsutil cannot give.

btrfsutil's iterator lists a subtree with a tree search per subvolume (to find its children) and a
path built for each. A boot that only moves the root aside needs, inside it, only the names (the
protected-name check), not a path per nested subvolume. The root tree holds one ROOT_REF item per
subvolume, keyed (parent id, ROOT_REF, child id), naming the child and the directory (inode) of the
parent holding it: all of them come with one range search (a few ioctls; the other items of the
range are skipped). A directory's path inside its subvolume is one inode lookup, made only for what
is listed.
"""

from __future__ import annotations

import errno
import fcntl
import struct
from bisect import bisect_left
from collections.abc import Iterator

_TREE_SEARCH_V2 = 0xC0709411  # _IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2): 104-byte key + u64 buf_size
_INO_LOOKUP = 0xD0009412  # _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args): u64 treeid, u64 objectid, char[4080]
ROOT_TREE = 1
_TOP_LEVEL = 5
_ROOT_REF = 156
_INODE_REF = 12
_NAME_LENGTH = struct.Struct("<H")  # btrfs_inode_ref: u64 index, u16 name_len; the name follows
_FIRST_FREE = 256  # the inode of a subvolume's top directory
_MAX64, _MAX8 = 2**64 - 1, 255
# btrfs_ioctl_search_key: tree_id, min/max objectid, min/max offset, min/max transid;
# min/max type, nr_items, pad; 4 pad
_KEY = struct.Struct("<7Q4I4Q")
_HEADER = struct.Struct("<3Q2I")  # btrfs_ioctl_search_header: transid, objectid, offset, type, len
_KIND_LENGTH = struct.Struct("<2I")  # the header's last two fields, at offset 24
# a header, then btrfs_root_ref (dirid, sequence, name_len; the name follows). The header is in CPU
# order, the item as on disk, little-endian: one order on the machines this runs on (x86_64, arm64,
# whose ioctl numbers these are)
_REF_ITEM = struct.Struct("<3Q2IQQH")
_BUFFER = 256 * 1024  # ~500 subvolumes' items (a ROOT_ITEM is 439 bytes) per ioctl


Ref = tuple[int, int, int, bytes]  # parent (the subvolume holding it), child, inode (the parent's directory), name


def all_refs(fd: int) -> list[Ref]:
    """The ROOT_REF item of every subvolume but the top level, in (parent, child) order. `fd` is any
    open file of the filesystem (the top level's)."""
    found: list[Ref] = []
    low, high = (_TOP_LEVEL, _ROOT_REF, 0), (_MAX64, _ROOT_REF, _MAX64)
    for args, pos, kind in _search(fd, ROOT_TREE, low, high):  # ROOT_ITEMs, ROOT_BACKREFs between: skipped
        if kind == _ROOT_REF:
            _transid, objectid, offset, _kind, _length, inode, _sequence, size = _REF_ITEM.unpack_from(args, pos)
            name = pos + _REF_ITEM.size
            found.append((objectid, offset, inode, bytes(args[name : name + size])))
    return found


_ROOT_ITEM = 132
_LAST_FREE = 2**64 - 256  # above: the trees of relocation and the like, not subvolumes
_TREE_RELOC = 2**64 - 8  # BTRFS_TREE_RELOC_OBJECTID: a balance's relocation tree of subvolume <offset>


def root_items(fd: int) -> list[tuple[int, int, bytes]]:
    """(subvolume id, key offset, item) of every subvolume's ROOT_ITEM but the top level's: one range
    search over the root tree (the other items of the range skipped)."""
    found: list[tuple[int, int, bytes]] = []
    for args, pos, kind in _search(fd, ROOT_TREE, (_FIRST_FREE, _ROOT_ITEM, 0), (_LAST_FREE, _ROOT_ITEM, _MAX64)):
        if kind == _ROOT_ITEM:
            _transid, objectid, offset, _kind, length = _HEADER.unpack_from(args, pos)
            found.append((objectid, offset, bytes(args[pos + _HEADER.size : pos + _HEADER.size + length])))
    return found


def relocated(fd: int) -> set[int]:
    """The subvolumes a balance under way or paused holds a relocation tree of (sharing their blocks)."""
    return {offset for offset, _item in items(fd, ROOT_TREE, _TREE_RELOC, _ROOT_ITEM)}


def children(every: list[Ref], holder: int) -> list[Ref]:
    """The items of the subvolumes directly in subvolume `holder`; `every`: all_refs()'s answer (in
    (parent, child) order)."""
    return every[bisect_left(every, (holder,)) : bisect_left(every, (holder + 1,))]


def below(every: list[Ref], subvolume: int) -> list[Ref]:
    """The items of the subvolumes nested in `subvolume`, at any depth, each after the one holding it.
    `every`: all_refs()'s answer (in (parent, child) order)."""
    found: list[Ref] = []
    seen, pending = {subvolume}, [subvolume]
    while pending:
        holder = pending.pop()
        for ref in children(every, holder):
            if ref[1] not in seen:  # (a damaged tree's loop: each once)
                seen.add(ref[1])
                found.append(ref)
                pending.append(ref[1])
    return found


Item = tuple[int, bytes]  # a key's offset, the item's bytes


def items(fd: int, tree: int, objectid: int, kind: int, offsets: tuple[int, int] = (0, _MAX64)) -> list[Item]:
    """(offset, item) of every item keyed (objectid, kind, offset) in `tree`, offsets within `offsets`.
    FileNotFoundError if the filesystem has no such tree (the quota tree, quotas off)."""
    found: list[Item] = []
    for args, pos, _ in _search(fd, tree, (objectid, kind, offsets[0]), (objectid, kind, offsets[1])):
        _transid, _objectid, offset, _kind, length = _HEADER.unpack_from(args, pos)
        found.append((offset, bytes(args[pos + _HEADER.size : pos + _HEADER.size + length])))
    return found


Key = tuple[int, int, int]  # objectid, type, offset: the trees' order


def _search(fd: int, tree: int, low: Key, high: Key) -> Iterator[tuple[bytearray, int, int]]:
    """(buffer, position of the item's header, the item's type) for every item of `tree` keyed from
    `low` to `high`, in the tree's order; the buffer is overwritten by the next search, so read the
    item before asking for the next one. One ioctl per buffer full, each restarting after the last key
    the previous one returned (whatever its type: a range holds every item between its ends)."""
    args = bytearray(_KEY.size + 8 + _BUFFER)
    start: Key | None = low
    while start is not None and start <= high:
        key = (tree, start[0], high[0], start[2], high[2], 0, _MAX64, start[1], high[1], 2**32 - 1, 0, 0, 0, 0, 0)
        _KEY.pack_into(args, 0, *key)
        struct.pack_into("=Q", args, _KEY.size, _BUFFER)
        fcntl.ioctl(fd, _TREE_SEARCH_V2, args)
        count = _KEY.unpack_from(args, 0)[9]  # the kernel writes back how many items it copied
        if count == 0:
            return
        pos = _KEY.size + 8
        for _ in range(count):
            kind, length = _KIND_LENGTH.unpack_from(args, pos + 24)
            yield args, pos, kind
            last = pos
            pos += _HEADER.size + length
        _transid, objectid, offset, kind, _length = _HEADER.unpack_from(args, last)
        start = _after(objectid, kind, offset)


def _after(objectid: int, kind: int, offset: int) -> tuple[int, int, int] | None:
    """The key right after (objectid, kind, offset), in the tree's order; None after the last one."""
    if offset < _MAX64:
        return objectid, kind, offset + 1
    if kind < _MAX8:
        return objectid, kind + 1, 0
    return (objectid + 1, 0, 0) if objectid < _MAX64 else None


def subvolume_of(fd: int) -> int:
    """The id of the subvolume holding the open file `fd` (an inode lookup with no tree named)."""
    args = bytearray(4096)
    struct.pack_into("=QQ", args, 0, 0, _FIRST_FREE)
    fcntl.ioctl(fd, _INO_LOOKUP, args)
    return int(struct.unpack_from("=Q", args)[0])


def directory(fd: int, tree: int, inode: int) -> bytes:
    """The path of directory `inode` inside subvolume `tree`, relative to its top: b"" for the top
    directory itself, else ending in b"/" (b"var/lib/"), of any length. FileNotFoundError if it is gone."""
    if inode == _FIRST_FREE:
        return b""
    args = bytearray(4096)
    struct.pack_into("=QQ", args, 0, tree, inode)
    try:
        fcntl.ioctl(fd, _INO_LOOKUP, args)
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        return _walked_up(fd, tree, inode)
    return bytes(args[16:]).split(b"\0", 1)[0]


def _walked_up(fd: int, tree: int, inode: int) -> bytes:
    """directory()'s answer where the kernel's lookup stops (a path over 4080 bytes): one name at a time,
    from each directory's INODE_REF item (keyed (inode, INODE_REF, its parent's inode); a directory has
    exactly one), up to the subvolume's top directory."""
    parts: list[bytes] = []
    seen = {inode}
    while inode != _FIRST_FREE:
        found = items(fd, tree, inode, _INODE_REF)
        if not found or found[0][0] in seen:  # gone since, or a loop (a damaged tree)
            raise FileNotFoundError(errno.ENOENT, f"directory {inode} of subvolume {tree}")
        seen.add(found[0][0])
        inode, item = found[0]
        (size,) = _NAME_LENGTH.unpack_from(item, 8)
        parts.append(item[10 : 10 + size])
    return b"".join(part + b"/" for part in reversed(parts))
