"""The only code that touches the kernel: mounts, btrfsutil, locks, journald, sd_notify."""
