"""A subvolume's direct children, read from the filesystem's root tree: what btrfsutil cannot list.

btrfsutil's iterator lists a subvolume's whole subtree (one search per subvolume, to find its own
children): a boot that only moves the root aside needs the subvolumes directly inside it (where a
hand-made `root/nix` is), not the thousand below them. The root tree holds, for every subvolume, one
ROOT_REF item per child, keyed (parent id, ROOT_REF, child id): one contiguous key range, read with
one tree search. Each item names the child and the directory (inode) of the parent holding it; that
directory's path inside the parent is one inode lookup, made once per directory.
"""

from __future__ import annotations

import fcntl
import struct

_TREE_SEARCH_V2 = 0xC0709411  # _IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2): 104-byte key + u64 buf_size
_INO_LOOKUP = 0xD0009412  # _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args): u64 treeid, u64 objectid, char[4080]
_ROOT_TREE = 1
_ROOT_REF = 156
_FIRST_FREE = 256  # the inode of a subvolume's top directory
_MAX = 2**64 - 1
# btrfs_ioctl_search_key: tree_id, min/max objectid, min/max offset, min/max transid; min/max type, nr_items, pad; 4 pad
_KEY = struct.Struct("=7Q4I4Q")
_HEADER = struct.Struct("=3Q2I")  # btrfs_ioctl_search_header: transid, objectid, offset, type, len
_REF = struct.Struct("=QQH")  # btrfs_root_ref: dirid, sequence, name_len; the name follows
_BUFFER = 16 * 1024  # ~300 children per search; more are read by searching on from the last one


def children(fd: int, parent: int) -> list[tuple[int, int, bytes]]:
    """(child id, directory inode in the parent, name) of every subvolume directly inside subvolume
    `parent`, in id order. `fd` is any open file of the filesystem (the top level's)."""
    found: list[tuple[int, int, bytes]] = []
    start = 0
    while True:
        args = bytearray(_KEY.size + 8 + _BUFFER)
        key = (_ROOT_TREE, parent, parent, start, _MAX, 0, _MAX, _ROOT_REF, _ROOT_REF, 2**32 - 1, 0, 0, 0, 0, 0)
        _KEY.pack_into(args, 0, *key)
        struct.pack_into("=Q", args, _KEY.size, _BUFFER)
        fcntl.ioctl(fd, _TREE_SEARCH_V2, args)
        count = _KEY.unpack_from(args, 0)[9]  # the kernel writes back how many items it copied
        pos = _KEY.size + 8
        for _ in range(count):
            _transid, objectid, child, kind, length = _HEADER.unpack_from(args, pos)
            pos += _HEADER.size
            if objectid == parent and kind == _ROOT_REF:  # the key range is exact; checked all the same
                dirid, _sequence, name_length = _REF.unpack_from(args, pos)
                found.append((child, dirid, bytes(args[pos + _REF.size : pos + _REF.size + name_length])))
            pos += length
        if count == 0 or not found or found[-1][0] == _MAX:
            return found
        start = found[-1][0] + 1


def directory(fd: int, tree: int, inode: int) -> bytes:
    """The path of directory `inode` inside subvolume `tree`, relative to its top: b"" for the top
    directory itself, else ending in b"/" (b"var/lib/")."""
    if inode == _FIRST_FREE:
        return b""
    args = bytearray(4096)
    struct.pack_into("=QQ", args, 0, tree, inode)
    fcntl.ioctl(fd, _INO_LOOKUP, args)
    return bytes(args[16:]).split(b"\0", 1)[0]
