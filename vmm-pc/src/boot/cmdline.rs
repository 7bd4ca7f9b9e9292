//! Placing the kernel command line.

use linux_loader::cmdline::Cmdline;
use vm_memory::GuestAddress;
use vmm_core::ram::GuestRam;

use super::BootError;
use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};

/// Writes `cmdline`, NUL-terminated, at [`CMDLINE_START`] and returns its
/// address and size (with the NUL), for the boot information.
///
/// `max_size` is the most bytes (with the NUL) the kernel takes, normally
/// [`LoadedKernel::cmdline_max_size`](super::LoadedKernel::cmdline_max_size);
/// it is capped at [`CMDLINE_MAX_SIZE`]. The line must be printable ASCII;
/// leading and trailing spaces are dropped.
pub fn load_cmdline(
    mem: &GuestRam,
    cmdline: &str,
    max_size: usize,
) -> Result<(GuestAddress, usize), BootError> {
    let max = max_size.min(CMDLINE_MAX_SIZE);
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let len = cmdline.len() + 1;
    if len > max {
        return Err(BootError::CmdlineTooLong { len, max });
    }
    let mut line = Cmdline::new(max).map_err(BootError::CmdlineInvalid)?;
    line.insert_str(cmdline)
        .map_err(BootError::CmdlineInvalid)?;
    let size = line
        .as_cstring()
        .map_err(BootError::CmdlineInvalid)?
        .as_bytes_with_nul()
        .len();
    let addr = GuestAddress(CMDLINE_START);
    linux_loader::loader::load_cmdline(mem, addr, &line).map_err(BootError::CmdlineWrite)?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::boot::test_images::guest_memory;

    #[test]
    fn cmdline_is_written_with_its_nul() {
        let mem = guest_memory(16 << 20);
        let text = "console=ttyS0 reboot=k panic=1 -- init-arg";
        let (addr, size) = load_cmdline(&mem, text, 2048).unwrap();
        assert_eq!(addr, GuestAddress(CMDLINE_START));
        assert_eq!(size, text.len() + 1);
        let mut back = vec![0xffu8; size];
        mem.read_slice(&mut back, addr).unwrap();
        assert_eq!(&back[..text.len()], text.as_bytes());
        assert_eq!(back[text.len()], 0);
    }

    #[test]
    fn empty_cmdline_is_just_a_nul() {
        let mem = guest_memory(16 << 20);
        let (addr, size) = load_cmdline(&mem, "", 2048).unwrap();
        assert_eq!(size, 1);
        let byte: u8 = mem.read_obj(addr).unwrap();
        assert_eq!(byte, 0);
    }

    #[test]
    fn too_long_cmdline_is_refused() {
        let mem = guest_memory(16 << 20);
        let text = "x".repeat(2048);
        assert!(matches!(
            load_cmdline(&mem, &text, 2048),
            Err(BootError::CmdlineTooLong {
                len: 2049,
                max: 2048
            })
        ));
        // One byte shorter fits exactly.
        assert!(load_cmdline(&mem, &text[1..], 2048).is_ok());
        // The machine's own limit caps a larger kernel limit.
        let text = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            load_cmdline(&mem, &text, usize::MAX),
            Err(BootError::CmdlineTooLong {
                max: CMDLINE_MAX_SIZE,
                ..
            })
        ));
    }

    #[test]
    fn cmdline_with_nul_or_control_bytes_is_refused() {
        let mem = guest_memory(16 << 20);
        assert!(matches!(
            load_cmdline(&mem, "console=ttyS0\0evil", 2048),
            Err(BootError::CmdlineNul)
        ));
        assert!(matches!(
            load_cmdline(&mem, "console=ttyS0\nquiet", 2048),
            Err(BootError::CmdlineInvalid(_))
        ));
    }
}
