//! A counter for one kind of fault that logs only its first occurrence.
//!
//! A guest can repeat a bad access millions of times; each device counts such
//! events and warns once, so a hostile or buggy guest cannot flood the host log.

use std::fmt;

use vm_device::bus::{PioAddress, PioAddressOffset};

/// The absolute port of an access, for messages.
fn port(base: PioAddress, offset: PioAddressOffset) -> u32 {
    u32::from(base.0) + u32::from(offset)
}

/// Counts occurrences of one kind of fault; the first is logged at `warn`,
/// the rest at `trace`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FaultLog {
    count: u64,
}

impl FaultLog {
    /// Counts one occurrence (saturating) and logs it.
    pub(crate) fn record(&mut self, device: &str, what: fmt::Arguments<'_>) {
        if self.count == 0 {
            log::warn!("{device}: {what} (further occurrences are only counted)");
        } else {
            log::trace!("{device}: {what}");
        }
        self.count = self.count.saturating_add(1);
    }

    /// A read the device does not decode (a wrong width or offset): counted,
    /// logged once, and answered with all ones, as a floating bus does.
    pub(crate) fn refuse_read(
        &mut self,
        device: &str,
        base: PioAddress,
        offset: PioAddressOffset,
        data: &mut [u8],
    ) {
        let port = port(base, offset);
        self.record(
            device,
            format_args!("{}-byte read at port {port:#x} refused", data.len()),
        );
        data.fill(0xFF);
    }

    /// A write the device does not decode: counted, logged once, dropped.
    pub(crate) fn refuse_write(
        &mut self,
        device: &str,
        base: PioAddress,
        offset: PioAddressOffset,
        data: &[u8],
    ) {
        let port = port(base, offset);
        self.record(
            device,
            format_args!("{}-byte write at port {port:#x} ignored", data.len()),
        );
    }

    /// How many occurrences were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_occurrence() {
        let mut log = FaultLog::default();
        assert_eq!(log.count(), 0);
        for _ in 0..3 {
            log.record("dev", format_args!("bad access"));
        }
        assert_eq!(log.count(), 3);
    }

    #[test]
    fn refused_reads_float_high_and_count() {
        let mut log = FaultLog::default();
        let mut data = [0u8; 4];
        log.refuse_read("dev", PioAddress(0x3f8), 1, &mut data);
        log.refuse_write("dev", PioAddress(0x3f8), 1, &data);
        assert_eq!(data, [0xFF; 4]);
        assert_eq!(log.count(), 2);
    }

    #[test]
    fn saturates() {
        let mut log = FaultLog { count: u64::MAX };
        log.record("dev", format_args!("bad access"));
        assert_eq!(log.count(), u64::MAX);
    }
}
