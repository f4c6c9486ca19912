"""rollback: a clean btrfs root subvolume at every boot, safely."""

__version__ = "0.1.0"
