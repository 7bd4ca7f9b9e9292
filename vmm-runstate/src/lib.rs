//! QEMU's run-state machine (being written).
