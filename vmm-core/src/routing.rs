//! KVM's GSI routing table as the VMM keeps it (`KVM_SET_GSI_ROUTING`
//! replaces the whole table, so every change goes through one copy).
//!
//! Two kinds of owners share it: the interrupt controllers, whose routes
//! (the in-kernel irqchip's pins, or the split irqchip's IO-APIC pins as
//! MSI messages) are replaced whole ([`RoutingTable::set_base`]); and
//! interrupt sources outside the VMM, each an irqfd on a GSI of its own
//! that KVM turns into an MSI message ([`RoutingTable::allocate`]): a
//! vhost ring's interrupt, sent by KVM without waking the VMM, as QEMU's
//! vector notifiers do.

use std::collections::BTreeMap;

/// The first GSI handed out for MSI routes: the controllers' own use
/// 0-23 (the IO-APIC's pins).
pub const FIRST_MSI_GSI: u32 = 24;
/// KVM's limit: a GSI must be below `KVM_MAX_IRQ_ROUTES` (4096 on x86).
pub const GSI_LIMIT: u32 = 4096;

/// Where a GSI goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Pin `pin` of in-kernel irqchip `chip` (PIC master 0, PIC slave 1,
    /// IO-APIC 2).
    Irqchip {
        /// The chip.
        chip: u32,
        /// Its pin.
        pin: u32,
    },
    /// An MSI message.
    Msi {
        /// The message address.
        address: u64,
        /// The message data.
        data: u32,
    },
}

/// Every GSI is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no free GSI for an MSI route (all of {FIRST_MSI_GSI}-{} are taken)", GSI_LIMIT - 1)]
pub struct NoFreeGsi;

/// The table: the controllers' routes and the allocated MSI routes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    base: Vec<(u32, Route)>,
    msi: BTreeMap<u32, (u64, u32)>,
}

impl RoutingTable {
    /// Replaces the controllers' routes (a GSI may appear more than once:
    /// an ISA IRQ goes to a PIC and to the IO-APIC).
    pub fn set_base(&mut self, routes: Vec<(u32, Route)>) {
        self.base = routes;
    }

    /// A GSI of its own for MSI message (`address`, `data`): the lowest
    /// free one from [`FIRST_MSI_GSI`] that the controllers do not use.
    pub fn allocate(&mut self, address: u64, data: u32) -> Result<u32, NoFreeGsi> {
        let gsi = (FIRST_MSI_GSI..GSI_LIMIT)
            .find(|g| !self.msi.contains_key(g) && !self.base.iter().any(|(b, _)| b == g))
            .ok_or(NoFreeGsi)?;
        self.msi.insert(gsi, (address, data));
        Ok(gsi)
    }

    /// Points allocated `gsi` at another message; false if it is not
    /// allocated.
    pub fn update(&mut self, gsi: u32, address: u64, data: u32) -> bool {
        match self.msi.get_mut(&gsi) {
            Some(m) => {
                *m = (address, data);
                true
            }
            None => false,
        }
    }

    /// Frees allocated `gsi`; false if it was not allocated.
    pub fn release(&mut self, gsi: u32) -> bool {
        self.msi.remove(&gsi).is_some()
    }

    /// Every entry, the controllers' first.
    pub fn entries(&self) -> Vec<(u32, Route)> {
        let msi = self
            .msi
            .iter()
            .map(|(&gsi, &(address, data))| (gsi, Route::Msi { address, data }));
        self.base.iter().copied().chain(msi).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(gsi: u32) -> (u32, Route) {
        (gsi, Route::Irqchip { chip: 2, pin: gsi })
    }

    #[test]
    fn msi_routes_take_the_lowest_free_gsi_past_the_controllers() {
        let mut t = RoutingTable::default();
        t.set_base((0..24).map(pin).collect());
        assert_eq!(t.allocate(0xfee0_0000, 0x41), Ok(24));
        assert_eq!(t.allocate(0xfee0_0000, 0x42), Ok(25));
        assert!(t.release(24));
        assert!(!t.release(24));
        assert_eq!(t.allocate(0xfee0_0000, 0x43), Ok(24));
        // A controller's GSI past 23 is never handed out.
        t.set_base(vec![pin(26)]);
        assert_eq!(t.allocate(0xfee0_0000, 0x44), Ok(27));
    }

    #[test]
    fn the_table_lists_the_controllers_then_the_msi_routes() {
        let mut t = RoutingTable::default();
        t.set_base(vec![pin(0), pin(1)]);
        let g = t.allocate(0xfee0_1000, 0x51).unwrap();
        assert!(t.update(g, 0xfee0_2000, 0x52));
        assert!(!t.update(g + 1, 0, 0));
        let all = t.entries();
        assert_eq!(
            all,
            [
                pin(0),
                pin(1),
                (
                    g,
                    Route::Msi {
                        address: 0xfee0_2000,
                        data: 0x52
                    }
                )
            ]
        );
        // Replacing the controllers' routes keeps the MSI ones.
        t.set_base(Vec::new());
        assert_eq!(t.entries().len(), 1);
    }

    #[test]
    fn the_gsis_run_out_cleanly() {
        let mut t = RoutingTable::default();
        for _ in FIRST_MSI_GSI..GSI_LIMIT {
            t.allocate(0xfee0_0000, 0).unwrap();
        }
        assert_eq!(t.allocate(0xfee0_0000, 0), Err(NoFreeGsi));
    }
}
