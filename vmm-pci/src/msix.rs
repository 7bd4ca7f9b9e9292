//! MSI-X: the capability in configuration space, the vector table and the
//! pending-bit array (PBA) in a BAR, and the rules that decide whether a
//! vector's message goes out now or waits as pending.
//!
//! A vector is delivered when MSI-X is enabled, the function is not masked
//! and the vector's own mask bit is clear. Otherwise signalling it sets its
//! pending bit; when the mask that held it back goes, it is delivered and
//! the bit cleared. The table starts with every vector masked, as the
//! specification requires at reset.

use crate::config::ConfigSpace;
use crate::PciError;

/// The MSI-X capability ID.
pub const CAPABILITY_ID: u8 = 0x11;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: the whole function masked.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: usize = 16;
/// Vector control: this vector masked.
const VECTOR_MASKED: u32 = 1;
/// The most vectors one function has.
pub const MAX_VECTORS: usize = 2048;

/// An MSI message: what a vector writes, where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// The address (on x86: 0xFEEx_xxxx, the local APICs' window).
    pub address: u64,
    /// The data (on x86: vector and delivery mode).
    pub data: u32,
}

/// The state a snapshot keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixState {
    /// The table, `ENTRY_SIZE` bytes per vector.
    pub table: Vec<u8>,
    /// The pending bits, one per vector.
    pub pending: Vec<bool>,
}

/// One function's MSI-X.
#[derive(Debug, Clone)]
pub struct Msix {
    table: Vec<u8>,
    pending: Vec<bool>,
    /// Where the capability is in configuration space.
    capability: usize,
    enabled: bool,
    function_masked: bool,
}

/// Where the table and the PBA live: a BAR and an offset in it each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// The table's BAR.
    pub table_bar: u8,
    /// The table's offset in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// The PBA's BAR.
    pub pba_bar: u8,
    /// The PBA's offset in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

impl Msix {
    /// `vectors` vectors laid out as `layout`, the capability added to
    /// `config`.
    pub fn new(
        config: &mut ConfigSpace,
        vectors: usize,
        layout: MsixLayout,
    ) -> Result<Self, PciError> {
        if vectors == 0 || vectors > MAX_VECTORS {
            return Err(PciError::MsixVectors(vectors));
        }
        let size_field = u16::try_from(vectors - 1).map_err(|_| PciError::MsixVectors(vectors))?;
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&size_field.to_le_bytes());
        body.extend_from_slice(
            &(layout.table_offset & !7 | u32::from(layout.table_bar & 7)).to_le_bytes(),
        );
        body.extend_from_slice(
            &(layout.pba_offset & !7 | u32::from(layout.pba_bar & 7)).to_le_bytes(),
        );
        // Only enable and function mask are the guest's to write.
        let mut writable = [0u8; 10];
        writable[1] = 0xc0;
        let capability = config.add_capability(CAPABILITY_ID, &body, &writable)?;
        let mut table = vec![0u8; vectors * ENTRY_SIZE];
        for entry in table.chunks_exact_mut(ENTRY_SIZE) {
            entry[12..16].copy_from_slice(&VECTOR_MASKED.to_le_bytes());
        }
        Ok(Self {
            table,
            pending: vec![false; vectors],
            capability,
            enabled: false,
            function_masked: false,
        })
    }

    /// How many vectors.
    pub fn vectors(&self) -> usize {
        self.pending.len()
    }

    /// The table's size in bytes.
    pub fn table_size(&self) -> usize {
        self.table.len()
    }

    /// The PBA's size in bytes (a bit per vector, in 64-bit words).
    pub fn pba_size(&self) -> usize {
        self.vectors().div_ceil(64) * 8
    }

    /// Whether MSI-X is enabled (the OS uses it instead of INTx).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Reads the enable and function-mask bits after a configuration write;
    /// returns the vectors to deliver now (pending, and no longer held).
    pub fn config_written(&mut self, config: &ConfigSpace) -> Vec<u16> {
        let control = config.read_u16(self.capability + 2);
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.release_pending()
    }

    fn entry_u32(&self, vector: usize, word: usize) -> u32 {
        let at = vector * ENTRY_SIZE + word * 4;
        self.table
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }

    /// Whether `vector` is held back now (by any of the three masks).
    pub fn is_masked(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        !self.enabled
            || self.function_masked
            || v >= self.vectors()
            || self.entry_u32(v, 3) & VECTOR_MASKED != 0
    }

    /// `vector`'s message as the table holds it.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        let v = usize::from(vector);
        (v < self.vectors()).then(|| MsiMessage {
            address: u64::from(self.entry_u32(v, 0)) | u64::from(self.entry_u32(v, 1)) << 32,
            data: self.entry_u32(v, 2),
        })
    }

    /// The device signals `vector`: its message if it goes out now, else
    /// None (pending, or no such vector).
    pub fn signal(&mut self, vector: u16) -> Option<MsiMessage> {
        let v = usize::from(vector);
        if v >= self.vectors() {
            return None;
        }
        if self.is_masked(vector) {
            self.pending[v] = true;
            return None;
        }
        self.message(vector)
    }

    fn release_pending(&mut self) -> Vec<u16> {
        let mut out = Vec::new();
        for v in 0..self.vectors() {
            let Ok(vector) = u16::try_from(v) else { break };
            if self.pending[v] && !self.is_masked(vector) {
                self.pending[v] = false;
                out.push(vector);
            }
        }
        out
    }

    /// The guest reads the table.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.table.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// The guest writes the table; returns the vectors to deliver now (a
    /// pending vector it unmasked).
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Vec<u16> {
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) else {
                break;
            };
            let Some(b) = self.table.get_mut(o) else {
                break;
            };
            // Address bits 1:0 are zero; of vector control only the mask.
            let mask = match o % ENTRY_SIZE {
                0 => 0xfc,
                1..=11 => 0xff,
                12 => 0x01,
                _ => 0x00,
            };
            *b = (*b & !mask) | (v & mask);
        }
        self.release_pending()
    }

    /// The guest reads the PBA (writes to it are ignored).
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let byte = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            *b = byte.map_or(0, |byte| {
                (0..8).fold(0u8, |acc, bit| {
                    let v = byte * 8 + bit;
                    acc | (u8::from(self.pending.get(v).copied().unwrap_or(false)) << bit)
                })
            });
        }
    }

    /// Back to reset: every vector masked, nothing pending, disabled (the
    /// capability's bits are reset with configuration space).
    pub fn reset(&mut self) {
        for entry in self.table.chunks_exact_mut(ENTRY_SIZE) {
            entry.fill(0);
            entry[12..16].copy_from_slice(&VECTOR_MASKED.to_le_bytes());
        }
        self.pending.fill(false);
        self.enabled = false;
        self.function_masked = false;
    }

    /// The state a snapshot keeps (enable and mask live in configuration
    /// space and are read back by [`Msix::config_written`] on restore).
    pub fn state(&self) -> MsixState {
        MsixState {
            table: self.table.clone(),
            pending: self.pending.clone(),
        }
    }

    /// Puts back a [`Msix::state`] of the same size.
    pub fn restore(&mut self, state: &MsixState, config: &ConfigSpace) -> Result<(), PciError> {
        if state.table.len() != self.table.len() || state.pending.len() != self.pending.len() {
            return Err(PciError::MsixVectors(state.pending.len()));
        }
        self.table.clone_from(&state.table);
        self.pending.clone_from(&state.pending);
        let control = config.read_u16(self.capability + 2);
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Identity;

    fn setup(vectors: usize) -> (ConfigSpace, Msix) {
        let mut c = ConfigSpace::new(Identity::default());
        let layout = MsixLayout {
            table_bar: 1,
            table_offset: 0,
            pba_bar: 1,
            pba_offset: 0x800,
        };
        let m = Msix::new(&mut c, vectors, layout).unwrap();
        (c, m)
    }

    fn program(m: &mut Msix, v: u64, addr: u64, data: u32) -> Vec<u16> {
        let base = v * ENTRY_SIZE as u64;
        m.table_write(base, &addr.to_le_bytes());
        m.table_write(base + 8, &data.to_le_bytes());
        m.table_write(base + 12, &0u32.to_le_bytes())
    }

    fn control(c: &mut ConfigSpace, m: &mut Msix, value: u16) -> Vec<u16> {
        c.write(0x42, &value.to_le_bytes());
        m.config_written(c)
    }

    #[test]
    fn the_capability_says_size_and_places() {
        let (c, m) = setup(3);
        assert_eq!(c.read_u16(0x40), 0x0011);
        assert_eq!(c.read_u16(0x42), 2, "table size minus one");
        assert_eq!(c.read_u32(0x44), 1, "table at offset 0 of BAR 1");
        assert_eq!(c.read_u32(0x48), 0x801, "PBA at 0x800 of BAR 1");
        assert_eq!((m.table_size(), m.pba_size()), (48, 8));
        assert!(Msix::new(
            &mut ConfigSpace::new(Identity::default()),
            0,
            MsixLayout {
                table_bar: 0,
                table_offset: 0,
                pba_bar: 0,
                pba_offset: 0
            }
        )
        .is_err());
    }

    #[test]
    fn vectors_go_out_only_when_nothing_masks_them() {
        let (mut c, mut m) = setup(2);
        // At reset: disabled and every vector masked.
        assert_eq!(m.signal(0), None);
        let mut ctrl = [0; 4];
        m.table_read(12, &mut ctrl);
        assert_eq!(ctrl, [1, 0, 0, 0]);
        assert!(
            control(&mut c, &mut m, CONTROL_ENABLE).is_empty(),
            "vector 0 still masked"
        );
        // Unmasking vector 0 releases what was pending.
        assert_eq!(program(&mut m, 0, 0xfee0_0000, 0x41), [0]);
        let mut pba = [0; 8];
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 0);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        assert_eq!(m.signal(0), Some(msg));
        // The function mask holds everything; lifting it releases.
        control(&mut c, &mut m, CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert_eq!(m.signal(0), None);
        m.pba_read(0, &mut pba);
        assert_eq!(pba[0], 1);
        assert_eq!(control(&mut c, &mut m, CONTROL_ENABLE), [0]);
        // A masked vector with a pending bit, unmasked through the table.
        m.table_write(12, &1u32.to_le_bytes());
        assert_eq!(m.signal(0), None);
        assert_eq!(m.table_write(12, &0u32.to_le_bytes()), [0]);
        // Unknown vectors are nothing.
        assert_eq!(m.signal(7), None);
        assert!(m.is_masked(7));
    }

    #[test]
    fn reserved_bits_stay_zero_and_reset_masks_all() {
        let (mut c, mut m) = setup(1);
        m.table_write(0, &[0xff; 16]);
        let mut e = [0; 16];
        m.table_read(0, &mut e);
        assert_eq!(e[0], 0xfc);
        assert_eq!(&e[12..], &[1, 0, 0, 0]);
        control(&mut c, &mut m, CONTROL_ENABLE);
        m.reset();
        assert!(!m.enabled());
        m.table_read(0, &mut e);
        assert_eq!(e, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        // The capability's writable bits are only enable and mask.
        c.write(0x42, &0xffffu16.to_le_bytes());
        assert_eq!(c.read_u16(0x42), 0xc000);
    }

    #[test]
    fn state_round_trip() {
        let (mut c, mut m) = setup(4);
        control(&mut c, &mut m, CONTROL_ENABLE);
        program(&mut m, 2, 0xfee0_1000, 0x55);
        m.table_write(2 * 16 + 12, &1u32.to_le_bytes());
        m.signal(2);
        let s = m.state();
        let (c2, mut m2) = {
            let (mut c2, m2) = setup(4);
            c2.restore(&c.state()).unwrap();
            (c2, m2)
        };
        m2.restore(&s, &c2).unwrap();
        assert!(m2.enabled());
        assert_eq!(m2.table_write(2 * 16 + 12, &0u32.to_le_bytes()), [2]);
        let (_, mut small) = setup(1);
        assert!(small.restore(&s, &c2).is_err());
    }

    #[test]
    fn any_table_or_pba_access_is_safe() {
        let (_, mut m) = setup(5);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % 200;
            let mut buf = vec![(x >> 8) as u8; ((x >> 20) % 9) as usize];
            match x % 3 {
                0 => {
                    m.table_write(off, &buf);
                }
                1 => m.table_read(off, &mut buf),
                _ => m.pba_read(off, &mut buf),
            }
            m.signal((x >> 40) as u16 % 8);
        }
        m.table_read(u64::MAX, &mut [0; 8]);
        m.table_write(u64::MAX - 2, &[1; 8]);
    }
}
