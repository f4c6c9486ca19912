"""What the tests and the benchmark share: the environment policy, the on-disk layout and its state,
loop-device disks, the one way to build a CLI invocation, swap signatures, the VM harness and the
journald stand-in. Test modules import helpers from here only, never from conftest files or from
each other."""
