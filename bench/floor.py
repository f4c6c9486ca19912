"""The floor for any Python rollback in the initrd: the interpreter, btrfsutil and mount(2) through
ctypes, nothing else (no settings, checks, logging or journal). Benchmark only, never shipped: it
shows what the interpreter alone costs next to the shell baseline (bench/vm.py runs it as the
rollback unit's command)."""

import ctypes
import os
import sys

import btrfsutil

if sys.argv[1:2] != ["run"]:  # the VM's fact collector also runs `rollback status`
    sys.exit(0)
libc = ctypes.CDLL(None, use_errno=True)
device, top = sys.argv[-1], "/run/rollback-floor"  # argv: run --device DEVICE
os.makedirs(top, exist_ok=True)
if libc.mount(device.encode(), top.encode(), b"btrfs", 0, b"subvolid=5") != 0:
    sys.exit(f"mount {device}: {os.strerror(ctypes.get_errno())}")
root = f"{top}/root"
if os.path.lexists(root):
    btrfsutil.delete_subvolume(root, recursive=True)
btrfsutil.create_subvolume(root)
libc.umount2(top.encode(), 0)
