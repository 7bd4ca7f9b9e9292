//! QEMU's clocks and timers (being written).
