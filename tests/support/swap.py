"""Swap and hibernation signatures, written where the kernel writes them."""

from __future__ import annotations

import os

from rollback.hibernation import SIGNATURE_SIZE


def write_signature(path: str, signature: bytes, offset_pages: int = 0) -> None:
    """Put `signature` at the end of the swap header page `offset_pages` pages into `path` (a swap
    device or file; a swap file's header is at resume_offset): as mkswap, or a saved image, leaves it."""
    page = os.sysconf("SC_PAGE_SIZE")
    with open(path, "r+b") as handle:
        handle.seek(offset_pages * page + page - SIGNATURE_SIZE)
        handle.write(signature.ljust(SIGNATURE_SIZE, b"\0"))


def read_signature(path: str, offset_pages: int = 0) -> bytes:
    """The signature at the end of that header page, without its padding."""
    page = os.sysconf("SC_PAGE_SIZE")
    with open(path, "rb") as handle:
        handle.seek(offset_pages * page + page - SIGNATURE_SIZE)
        return handle.read(SIGNATURE_SIZE).rstrip(b"\0")
