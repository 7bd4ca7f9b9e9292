//! Address windows for BARs: the machine hands out each BAR's initial
//! place from one of these (the 32-bit MMIO hole, a 64-bit window above
//! RAM, or ports), each place aligned to its size, as PCI requires.

use crate::PciError;

/// A window of addresses handed out from the bottom up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    name: &'static str,
    start: u64,
    end: u64,
    next: u64,
}

impl Window {
    /// `[start, end)`, called `name` in errors.
    pub fn new(name: &'static str, start: u64, end: u64) -> Self {
        Self {
            name,
            start,
            end,
            next: start,
        }
    }

    /// The window's bounds.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.start..self.end
    }

    /// `size` bytes (a power of two), aligned to `size`.
    pub fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        let full = PciError::WindowFull {
            window: self.name,
            size,
        };
        if !size.is_power_of_two() {
            return Err(full);
        }
        let base = self.next.checked_add(size - 1).ok_or(full.clone())? & !(size - 1);
        let end = base.checked_add(size).ok_or(full.clone())?;
        if end > self.end {
            return Err(full);
        }
        self.next = end;
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_aligned_to_their_size_and_bounded() {
        let mut w = Window::new("mmio32", 0xe000_0000, 0xe001_0000);
        assert_eq!(w.allocate(0x1000), Ok(0xe000_0000));
        assert_eq!(w.allocate(0x4000), Ok(0xe000_4000), "aligned up");
        assert_eq!(w.allocate(0x100), Ok(0xe000_8000));
        assert_eq!(
            w.allocate(0x8000),
            Err(PciError::WindowFull {
                window: "mmio32",
                size: 0x8000
            })
        );
        assert!(w.allocate(0x3000).is_err(), "not a power of two");
        let mut top = Window::new("mmio64", u64::MAX - 0xfff, u64::MAX);
        assert!(top.allocate(0x1000).is_err());
        assert!(top.allocate(1 << 63).is_err());
    }
}
