//! The common configuration structure (virtio 1.2, 4.1.4.3) as plain
//! state: feature negotiation, the device status state machine and each
//! queue's set-up registers. Writes return what the transport must do
//! about them ([`Effect`]); nothing here touches memory, threads or
//! interrupts.
//!
//! Accesses must be of the field's natural width (64-bit fields also as
//! two independent 32-bit halves, as the specification requires the device
//! to allow); any other access reads 0 and writes nothing.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};

use crate::device::VIRTIO_MSI_NO_VECTOR;

/// The structure's length as the capability gives it (through
/// `queue_device`; no `queue_notify_data`, `queue_reset` or admin queues).
pub const COMMON_CFG_LEN: u64 = 0x38;

const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;
/// The end of `queue_device`, the last field.
const QUEUE_END: u64 = QUEUE_DEVICE + 8;

const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// One queue's registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueConfig {
    /// The largest size the device allows (a power of two).
    pub max_size: u16,
    /// The size the driver chose (a power of two, at most `max_size`).
    pub size: u16,
    /// Its MSI-X vector, or [`VIRTIO_MSI_NO_VECTOR`].
    pub msix_vector: u16,
    /// Whether the driver enabled it.
    pub enabled: bool,
    /// The descriptor area.
    pub desc: u64,
    /// The driver (available) area.
    pub driver: u64,
    /// The device (used) area.
    pub device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            msix_vector: VIRTIO_MSI_NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// What the transport must do after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the register.
    None,
    /// The driver wrote 0 to `device_status`: reset the device.
    Reset,
    /// DRIVER_OK was set: start the device.
    DriverOk,
    /// An MSI-X vector mapping changed.
    Vectors,
    /// The driver broke the protocol in a way that needs a reset (DRIVER_OK
    /// without FEATURES_OK): set DEVICE_NEEDS_RESET.
    NeedsReset,
}

/// Values the transport keeps elsewhere, for reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Live {
    /// `config_generation`.
    pub generation: u8,
    /// Whether DEVICE_NEEDS_RESET is set (by the device or the transport).
    pub needs_reset: bool,
}

/// The common configuration's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommonConfig {
    /// The features offered.
    pub device_features: u64,
    /// The features the driver wrote (checked at FEATURES_OK).
    pub driver_features: u64,
    /// `device_feature_select`.
    pub device_feature_select: u32,
    /// `driver_feature_select`.
    pub driver_feature_select: u32,
    /// `config_msix_vector`.
    pub config_msix_vector: u16,
    /// `device_status` as the driver set it (DEVICE_NEEDS_RESET is kept in
    /// [`Live`]).
    pub status: u8,
    /// `queue_select`.
    pub queue_select: u16,
    /// The queues.
    pub queues: Vec<QueueConfig>,
    /// How many MSI-X vectors the function has (valid vectors are below).
    pub msix_vectors: u16,
}

impl CommonConfig {
    /// A device offering `device_features` with queues of `max_sizes` and
    /// `msix_vectors` MSI-X vectors, in its reset state.
    pub fn new(device_features: u64, max_sizes: &[u16], msix_vectors: u16) -> Self {
        Self {
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_msix_vector: VIRTIO_MSI_NO_VECTOR,
            status: 0,
            queue_select: 0,
            queues: max_sizes.iter().copied().map(QueueConfig::new).collect(),
            msix_vectors,
        }
    }

    /// Back to the reset state (the offer and the queues' maxima stay).
    pub fn reset(&mut self) {
        let max_sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size).collect();
        *self = Self::new(self.device_features, &max_sizes, self.msix_vectors);
    }

    /// The features both sides agreed on (0 before FEATURES_OK).
    pub fn negotiated(&self) -> u64 {
        if self.status & FEATURES_OK != 0 {
            self.driver_features & self.device_features
        } else {
            0
        }
    }

    /// Whether DRIVER_OK is set.
    pub fn driver_ok(&self) -> bool {
        self.status & DRIVER_OK != 0
    }

    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The selected queue, while its registers may still change (not
    /// enabled, DRIVER_OK not set).
    fn selected_for_setup(&mut self) -> Option<&mut QueueConfig> {
        let driver_ok = self.driver_ok();
        self.queues
            .get_mut(usize::from(self.queue_select))
            .filter(|q| !q.enabled && !driver_ok)
    }

    fn vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            VIRTIO_MSI_NO_VECTOR
        }
    }

    /// The driver reads `data.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8], live: Live) {
        data.fill(0);
        let q = self.selected();
        let value: u64 = match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select.into(),
            (DEVICE_FEATURE, 4) => feature_word(self.device_features, self.device_feature_select),
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select.into(),
            (DRIVER_FEATURE, 4) => feature_word(self.driver_features, self.driver_feature_select),
            (CONFIG_MSIX_VECTOR, 2) => self.config_msix_vector.into(),
            (NUM_QUEUES, 2) => self.queues.len() as u64,
            (DEVICE_STATUS, 1) => {
                u64::from(self.status | if live.needs_reset { NEEDS_RESET } else { 0 })
            }
            (CONFIG_GENERATION, 1) => live.generation.into(),
            (QUEUE_SELECT, 2) => self.queue_select.into(),
            (QUEUE_SIZE, 2) => q.map_or(0, |q| q.size).into(),
            (QUEUE_MSIX_VECTOR, 2) => q.map_or(VIRTIO_MSI_NO_VECTOR, |q| q.msix_vector).into(),
            (QUEUE_ENABLE, 2) => q.map_or(0, |q| u64::from(q.enabled)),
            (QUEUE_NOTIFY_OFF, 2) => q.map_or(0, |_| self.queue_select.into()),
            (QUEUE_DESC..QUEUE_END, 4 | 8) => {
                let field = offset & !7;
                let full = q.map_or(0, |q| match field {
                    QUEUE_DESC => q.desc,
                    QUEUE_DRIVER => q.driver,
                    _ => q.device,
                });
                match (offset & 7, data.len()) {
                    (0, 8) => full,
                    (0, 4) => full & 0xffff_ffff,
                    (4, 4) => full >> 32,
                    _ => return,
                }
            }
            _ => return,
        };
        let n = data.len();
        data.copy_from_slice(&value.to_le_bytes()[..n]);
    }

    /// The driver writes `data` at `offset`; returns what else must happen.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Effect {
        let mut b = [0u8; 8];
        if data.len() > 8 {
            return Effect::None;
        }
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v as u32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v as u32,
            (DRIVER_FEATURE, 4) => {
                // Features are fixed once FEATURES_OK is set.
                if self.status & FEATURES_OK == 0 {
                    let shift = match self.driver_feature_select {
                        0 => 0,
                        1 => 32,
                        _ => return Effect::None,
                    };
                    self.driver_features =
                        (self.driver_features & !(0xffff_ffff << shift)) | (v << shift);
                }
            }
            (CONFIG_MSIX_VECTOR, 2) => {
                self.config_msix_vector = self.vector(v as u16);
                return Effect::Vectors;
            }
            (DEVICE_STATUS, 1) => return self.write_status(v as u8),
            (QUEUE_SELECT, 2) => self.queue_select = v as u16,
            (QUEUE_SIZE, 2) => {
                let size = v as u16;
                if let Some(q) = self.selected_for_setup() {
                    if size.is_power_of_two() && size <= q.max_size {
                        q.size = size;
                    } else {
                        log::debug!("virtio: queue size {size} refused (max {})", q.max_size);
                    }
                }
            }
            (QUEUE_MSIX_VECTOR, 2) => {
                let vector = self.vector(v as u16);
                if let Some(q) = self.queues.get_mut(usize::from(self.queue_select)) {
                    q.msix_vector = vector;
                    return Effect::Vectors;
                }
            }
            (QUEUE_ENABLE, 2) => {
                // Only 1 means anything (writing 0 is forbidden without
                // VIRTIO_F_RING_RESET); enabling twice changes nothing.
                if v == 1 {
                    if let Some(q) = self.selected_for_setup() {
                        q.enabled = true;
                    }
                }
            }
            (QUEUE_DESC..QUEUE_END, 4 | 8) => {
                let field = offset & !7;
                let (mask, shift) = match (offset & 7, data.len()) {
                    (0, 8) => (u64::MAX, 0),
                    (0, 4) => (0xffff_ffff, 0),
                    (4, 4) => (0xffff_ffff << 32, 32),
                    _ => return Effect::None,
                };
                if let Some(q) = self.selected_for_setup() {
                    let reg = match field {
                        QUEUE_DESC => &mut q.desc,
                        QUEUE_DRIVER => &mut q.driver,
                        _ => &mut q.device,
                    };
                    *reg = (*reg & !mask) | ((v << shift) & mask);
                }
            }
            _ => log::debug!(
                "virtio: common configuration write of {} bytes at {offset:#x} ignored",
                data.len()
            ),
        }
        Effect::None
    }

    /// The status state machine: 0 resets; otherwise bits are only ever
    /// added, FEATURES_OK only sticks for an acceptable feature set, and
    /// DRIVER_OK needs FEATURES_OK.
    fn write_status(&mut self, v: u8) -> Effect {
        if v == 0 {
            return Effect::Reset;
        }
        // DEVICE_NEEDS_RESET is the device's to set.
        let mut v = v & !NEEDS_RESET;
        let old = self.status;
        if v & old != old {
            log::debug!("virtio: status {v:#x} would clear bits of {old:#x}; ignored");
            return Effect::None;
        }
        let added = v & !old;
        if added & FEATURES_OK != 0 && !self.features_acceptable() {
            log::debug!(
                "virtio: driver features {:#x} refused (offered {:#x})",
                self.driver_features,
                self.device_features
            );
            v &= !FEATURES_OK;
        }
        if added & DRIVER_OK != 0 {
            if v & FEATURES_OK == 0 {
                self.status = v & !DRIVER_OK;
                return Effect::NeedsReset;
            }
            self.status = v;
            return Effect::DriverOk;
        }
        self.status = v;
        Effect::None
    }

    /// The driver accepted only features we offered, VERSION_1 among them.
    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }
}

fn feature_word(features: u64, select: u32) -> u64 {
    match select {
        0 => features & 0xffff_ffff,
        1 => features >> 32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

    fn common() -> CommonConfig {
        CommonConfig::new(VERSION_1 | 0b110, &[256, 64], 3)
    }

    fn r(c: &CommonConfig, offset: u64, len: usize) -> u64 {
        let mut d = vec![0; len];
        c.read(offset, &mut d, Live::default());
        let mut b = [0; 8];
        b[..len].copy_from_slice(&d);
        u64::from_le_bytes(b)
    }

    fn w(c: &mut CommonConfig, offset: u64, len: usize, v: u64) -> Effect {
        c.write(offset, &v.to_le_bytes()[..len])
    }

    #[test]
    fn features_are_offered_by_word_and_checked_at_features_ok() {
        let mut c = common();
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 0b110);
        w(&mut c, DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 1, "VERSION_1 is bit 32");
        w(&mut c, DEVICE_FEATURE_SELECT, 4, 2);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 0);
        // Accepting a feature not offered: FEATURES_OK does not stick.
        w(&mut c, DRIVER_FEATURE, 4, 0b1);
        w(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut c, DRIVER_FEATURE, 4, 1);
        assert_eq!(w(&mut c, DEVICE_STATUS, 1, 0b1011), Effect::None);
        assert_eq!(r(&c, DEVICE_STATUS, 1), 0b0011);
        // Leaving out VERSION_1: refused too.
        w(&mut c, DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut c, DRIVER_FEATURE, 4, 0b100);
        w(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut c, DRIVER_FEATURE, 4, 0);
        w(&mut c, DEVICE_STATUS, 1, 0b1011);
        assert_eq!(r(&c, DEVICE_STATUS, 1), 0b0011);
        // A subset with VERSION_1: accepted, then frozen.
        w(&mut c, DRIVER_FEATURE, 4, 1);
        w(&mut c, DEVICE_STATUS, 1, 0b1011);
        assert_eq!(r(&c, DEVICE_STATUS, 1), 0b1011);
        assert_eq!(c.negotiated(), VERSION_1 | 0b100);
        w(&mut c, DRIVER_FEATURE, 4, 0);
        assert_eq!(c.negotiated(), VERSION_1 | 0b100);
        // Feature words past the second read 0 and take nothing.
        w(&mut c, DRIVER_FEATURE_SELECT, 4, 5);
        assert_eq!(r(&c, DRIVER_FEATURE, 4), 0);
    }

    #[test]
    fn status_bits_only_grow_and_driver_ok_needs_features_ok() {
        let mut c = common();
        assert_eq!(w(&mut c, DEVICE_STATUS, 1, 3), Effect::None);
        assert_eq!(w(&mut c, DEVICE_STATUS, 1, 1), Effect::None, "clearing");
        assert_eq!(r(&c, DEVICE_STATUS, 1), 3);
        assert_eq!(w(&mut c, DEVICE_STATUS, 1, 7), Effect::NeedsReset);
        assert_eq!(r(&c, DEVICE_STATUS, 1), 3);
        w(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut c, DRIVER_FEATURE, 4, 1);
        w(&mut c, DEVICE_STATUS, 1, 0xb);
        assert_eq!(w(&mut c, DEVICE_STATUS, 1, 0x4f), Effect::DriverOk);
        assert_eq!(
            r(&c, DEVICE_STATUS, 1),
            0x0f,
            "NEEDS_RESET is not the driver's"
        );
        let live = Live {
            generation: 9,
            needs_reset: true,
        };
        let mut s = [0];
        c.read(DEVICE_STATUS, &mut s, live);
        assert_eq!(s[0], 0x4f);
        c.read(CONFIG_GENERATION, &mut s, live);
        assert_eq!(s[0], 9);
        assert_eq!(w(&mut c, DEVICE_STATUS, 1, 0), Effect::Reset);
    }

    #[test]
    fn queue_registers_follow_the_rules() {
        let mut c = common();
        assert_eq!(r(&c, NUM_QUEUES, 2), 2);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 256);
        w(&mut c, QUEUE_SIZE, 2, 100);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 256, "not a power of two");
        w(&mut c, QUEUE_SIZE, 2, 512);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 256, "above the maximum");
        w(&mut c, QUEUE_SIZE, 2, 0);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 256, "zero");
        w(&mut c, QUEUE_SIZE, 2, 128);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 128);
        // 64-bit fields as halves, or whole.
        w(&mut c, QUEUE_DESC, 4, 0x1000);
        w(&mut c, QUEUE_DESC + 4, 4, 0x2);
        assert_eq!(r(&c, QUEUE_DESC, 8), 0x2_0000_1000);
        assert_eq!(r(&c, QUEUE_DESC + 4, 4), 2);
        w(&mut c, QUEUE_DRIVER, 8, 0x3000);
        assert_eq!(r(&c, QUEUE_DRIVER, 4), 0x3000);
        w(&mut c, QUEUE_DEVICE + 2, 4, 0xffff);
        assert_eq!(r(&c, QUEUE_DEVICE, 8), 0, "misaligned half");
        assert_eq!(r(&c, QUEUE_NOTIFY_OFF, 2), 0);
        // Vectors past the table read back as NO_VECTOR.
        assert_eq!(w(&mut c, QUEUE_MSIX_VECTOR, 2, 2), Effect::Vectors);
        assert_eq!(r(&c, QUEUE_MSIX_VECTOR, 2), 2);
        w(&mut c, QUEUE_MSIX_VECTOR, 2, 3);
        assert_eq!(r(&c, QUEUE_MSIX_VECTOR, 2), 0xffff);
        w(&mut c, CONFIG_MSIX_VECTOR, 2, 0x7ff);
        assert_eq!(r(&c, CONFIG_MSIX_VECTOR, 2), 0xffff);
        // Enabled: the set-up is frozen; enabling twice or writing 0 is
        // nothing.
        w(&mut c, QUEUE_ENABLE, 2, 1);
        assert_eq!(r(&c, QUEUE_ENABLE, 2), 1);
        w(&mut c, QUEUE_ENABLE, 2, 0);
        assert_eq!(r(&c, QUEUE_ENABLE, 2), 1);
        w(&mut c, QUEUE_SIZE, 2, 64);
        w(&mut c, QUEUE_DESC, 4, 0x5000);
        assert_eq!((r(&c, QUEUE_SIZE, 2), r(&c, QUEUE_DESC, 4)), (128, 0x1000));
        // The second queue, and one that does not exist.
        w(&mut c, QUEUE_SELECT, 2, 1);
        assert_eq!((r(&c, QUEUE_SIZE, 2), r(&c, QUEUE_NOTIFY_OFF, 2)), (64, 1));
        w(&mut c, QUEUE_SELECT, 2, 9);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 0);
        assert_eq!(r(&c, QUEUE_MSIX_VECTOR, 2), 0xffff);
        assert_eq!(w(&mut c, QUEUE_MSIX_VECTOR, 2, 0), Effect::None);
        w(&mut c, QUEUE_ENABLE, 2, 1);
        c.reset();
        assert_eq!(c, common());
    }

    #[test]
    fn wrong_widths_read_zero_and_write_nothing() {
        let mut c = common();
        let before = c.clone();
        for offset in 0..0x40 {
            for len in [1usize, 2, 3, 4, 8, 16] {
                let natural = matches!(
                    (offset, len),
                    (0x00 | 0x04 | 0x08 | 0x0c, 4)
                        | (0x10 | 0x12 | 0x16 | 0x18 | 0x1a | 0x1c | 0x1e, 2)
                        | (0x14 | 0x15, 1)
                        | (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4)
                        | (0x20 | 0x28 | 0x30, 8)
                );
                if natural {
                    continue;
                }
                let mut d = vec![0xaa; len];
                c.read(offset, &mut d, Live::default());
                assert!(d.iter().all(|&b| b == 0), "{offset:#x}/{len}");
                c.write(offset, &vec![0xff; len]);
            }
        }
        assert_eq!(c, before);
    }
}
