//! The VMMs `bench net` boots, each with the device its rows go through
//! and the command that runs it in L1.

use super::{APPEND, HOST_ADDR, MEMORY_MIB, PORT, TAP};

/// The guest's CID on the socket devices.
pub(super) const GUEST_CID: u32 = 3;
/// Our virtio-vsock-pci's listening socket in L1 (`uds=`); the guest's
/// connections to CID 2 port P reach `UDS_P`.
pub(super) const UDS: &str = "/tmp/vsock.sock";

/// A VMM with one device under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Vmm {
    /// Ours, virtio-net-pci on a tap, frames moved by our worker.
    Ours,
    /// Ours, virtio-net-pci on a tap with `vhost=on`.
    OursVhost,
    /// QEMU microvm, virtio-net-pci, `vhost=off`.
    Qemu,
    /// QEMU microvm, virtio-net-pci, `vhost=on`.
    QemuVhost,
    /// Ours, virtio-vsock-pci on Unix sockets (`uds=`).
    VsockOurs,
    /// Ours, vhost-vsock-pci.
    VsockOursVhost,
    /// QEMU microvm, vhost-vsock-pci.
    VsockQemu,
}

pub(super) const VMMS: [Vmm; 7] = [
    Vmm::Ours,
    Vmm::Qemu,
    Vmm::OursVhost,
    Vmm::QemuVhost,
    Vmm::VsockOurs,
    Vmm::VsockQemu,
    Vmm::VsockOursVhost,
];

impl Vmm {
    pub(super) fn key(self) -> &'static str {
        match self {
            Vmm::Ours => "ours",
            Vmm::OursVhost => "ours-vhost",
            Vmm::Qemu => "qemu",
            Vmm::QemuVhost => "qemu-vhost",
            Vmm::VsockOurs => "vsock-ours",
            Vmm::VsockOursVhost => "vsock-ours-vhost",
            Vmm::VsockQemu => "vsock-qemu",
        }
    }

    pub(super) fn from_key(key: &str) -> Option<Self> {
        VMMS.into_iter().find(|v| v.key() == key)
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Vmm::Ours => "ours vhost=off",
            Vmm::OursVhost => "ours vhost=on",
            Vmm::Qemu => "QEMU vhost=off",
            Vmm::QemuVhost => "QEMU vhost=on",
            Vmm::VsockOurs => "ours virtio-vsock-pci uds",
            Vmm::VsockOursVhost => "ours vhost-vsock-pci",
            Vmm::VsockQemu => "QEMU vhost-vsock-pci",
        }
    }

    pub(super) fn is_ours(self) -> bool {
        matches!(
            self,
            Vmm::Ours | Vmm::OursVhost | Vmm::VsockOurs | Vmm::VsockOursVhost
        )
    }

    /// Whether its rows go over vsock (else TCP on the tap).
    pub(super) fn is_vsock(self) -> bool {
        matches!(self, Vmm::VsockOurs | Vmm::VsockOursVhost | Vmm::VsockQemu)
    }

    /// The host kernel's device it needs in L1, if any.
    pub(super) fn needs(self) -> Option<&'static str> {
        match self {
            Vmm::OursVhost | Vmm::QemuVhost => Some("/dev/vhost-net"),
            Vmm::VsockOursVhost | Vmm::VsockQemu => Some("/dev/vhost-vsock"),
            Vmm::Ours | Vmm::Qemu | Vmm::VsockOurs => None,
        }
    }

    /// `net_load host`'s LISTEN, TAP and ADDR/PREFIX for it.
    pub(super) fn listen(self) -> String {
        match self {
            Vmm::VsockOurs => format!("unix:{UDS}_{PORT} - -"),
            Vmm::VsockOursVhost | Vmm::VsockQemu => format!("vsock:{PORT} - -"),
            Vmm::Ours | Vmm::OursVhost | Vmm::Qemu | Vmm::QemuVhost => {
                format!("{PORT} {TAP} {HOST_ADDR}/24")
            }
        }
    }

    /// The command running this VMM with `cpus` vCPUs (`$VMM`, `$QEMU`
    /// and `$QEMU_DATA` come from the test bed). QEMU names its threads
    /// (`debug-threads=on`), so that its vCPU threads can be told apart
    /// from its data path.
    pub(super) fn command(self, cpus: u32) -> String {
        let initrd = if self.is_vsock() {
            "initrd-vsock"
        } else {
            "initrd"
        };
        let qemu = |device: &str| {
            format!(
                "\"$QEMU\" -M microvm,pcie=on -accel kvm -cpu host,-arch-capabilities -smp {cpus} \
                 -m {MEMORY_MIB}M -nodefaults -no-user-config -display none -no-reboot \
                 -serial stdio -L \"$QEMU_DATA\" -kernel bzImage -initrd {initrd} \
                 -append '{APPEND}' -name bench,debug-threads=on {device}"
            )
        };
        let qemu_net = |vhost: &str| {
            qemu(&format!(
                "-netdev tap,id=n0,ifname={TAP},script=no,downscript=no,vhost={vhost} \
                 -device virtio-net-pci,netdev=n0,romfile="
            ))
        };
        let ours = |device: &str| {
            format!(
                "\"$VMM\" --kernel bzImage --initrd {initrd} --memory {MEMORY_MIB}M --cpus {cpus} \
                 --append '{APPEND}' {device}"
            )
        };
        match self {
            Vmm::Ours => ours(&format!(
                "--netdev tap,id=n0,ifname={TAP},vhost=off --device virtio-net-pci,netdev=n0"
            )),
            Vmm::OursVhost => ours(&format!(
                "--netdev tap,id=n0,ifname={TAP},vhost=on --device virtio-net-pci,netdev=n0"
            )),
            Vmm::Qemu => qemu_net("off"),
            Vmm::QemuVhost => qemu_net("on"),
            Vmm::VsockOurs => ours(&format!(
                "--device virtio-vsock-pci,guest-cid={GUEST_CID},uds={UDS}"
            )),
            Vmm::VsockOursVhost => ours(&format!("--device vhost-vsock-pci,guest-cid={GUEST_CID}")),
            Vmm::VsockQemu => qemu(&format!("-device vhost-vsock-pci,guest-cid={GUEST_CID}")),
        }
    }
}
