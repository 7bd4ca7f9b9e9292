//! The machine's request lines: the i8042's reset, and ACPI's poweroff and
//! S3 in PM1 control.

use vmm_devices::irq::Trigger;
use vmm_devices::EventFdTrigger;
use vmm_sys_util::eventfd::EventFd;

/// A request the guest makes of the machine (reset, power off, sleep):
/// the main loop hears it on the eventfd, and the vCPU whose access fired
/// it stops at once (vmm-core's `stop_current`, as QEMU's
/// `qemu_system_reset_request` stops the current CPU), so that it runs no
/// further than the instruction that asked and the main loop's pause finds
/// it parked instead of kicking it out of the guest. The main loop always
/// answers these with a pause: a reset, an exit, or `suspended`.
#[derive(Debug)]
pub struct RequestLine(EventFdTrigger);

impl RequestLine {
    /// The line on `fd`, which the main loop watches.
    pub fn new(fd: EventFd) -> Self {
        Self(EventFdTrigger::new(fd))
    }
}

impl Trigger for RequestLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        vmm_core::vcpu::stop_current();
        self.0.trigger()
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    use super::*;

    #[test]
    fn the_main_loop_hears_each_request() {
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        let line = RequestLine::new(fd.try_clone().unwrap());
        line.trigger().unwrap();
        line.trigger().unwrap();
        assert_eq!(fd.read().unwrap(), 2);
    }
}
