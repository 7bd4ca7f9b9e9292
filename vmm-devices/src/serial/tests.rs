//! Unit tests of the 16550A adapter, after docs/devices.md §3.3 and §3.5.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;
use crate::test_util::{fired, inb, line, outb, BrokenPipe, SharedBuf};

const COM1: u16 = 0x3F8;

// Offsets as Linux names them.
const RX: u16 = 0;
const IER_: u16 = 1;
const IIR: u16 = 2;
const LCR_: u16 = 3;
const MCR_: u16 = 4;
const LSR: u16 = 5;
const MSR: u16 = 6;
const SCR: u16 = 7;

#[derive(Debug, Default)]
struct CountEvents {
    in_buffer_empty: AtomicU64,
}

impl SerialEvents for CountEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        self.in_buffer_empty.fetch_add(1, Ordering::Relaxed);
    }
}

struct Uart {
    dev: SerialDevice,
    irq: EventFdTrigger,
    out: SharedBuf,
}

impl Uart {
    fn new() -> Self {
        let (irq, probe) = line();
        let out = SharedBuf::default();
        let dev = SerialDevice::new(irq, Box::new(out.clone()));
        Self {
            dev,
            irq: probe,
            out,
        }
    }

    fn inb(&mut self, offset: u16) -> u8 {
        inb(&mut self.dev, COM1, offset)
    }

    fn outb(&mut self, offset: u16, value: u8) {
        outb(&mut self.dev, COM1, offset, value);
    }

    fn edges(&self) -> u64 {
        fired(&self.irq)
    }
}

#[test]
fn reset_values() {
    let mut u = Uart::new();
    assert_eq!(u.inb(LSR), 0x60);
    assert_eq!(u.inb(IIR), 0x01);
    assert_eq!(u.inb(IER_), 0x00);
    // vm-superio resets LCR to 8N1 (0x03); QEMU to 0x00. No driver relies on it.
    assert_eq!(u.inb(LCR_), 0x03);
    assert_eq!(u.inb(MCR_), 0x08);
    assert_eq!(u.inb(MSR), 0xB0);
    assert_eq!(u.inb(SCR), 0x00);
    assert_eq!(u.edges(), 0);
    assert_eq!(u.dev.fifo_capacity_left(), RX_FIFO_CAPACITY);
}

#[test]
fn scratch_register() {
    let mut u = Uart::new();
    u.outb(SCR, 0x5A);
    assert_eq!(u.inb(SCR), 0x5A);
    u.outb(SCR, 0xA5);
    assert_eq!(u.inb(SCR), 0xA5);
}

#[test]
fn divisor_latch() {
    let mut u = Uart::new();
    u.outb(LCR_, 0x80);
    assert_eq!(u.inb(0), 0x0C);
    assert_eq!(u.inb(1), 0x00);
    u.outb(0, 0x01);
    u.outb(1, 0x00);
    u.outb(LCR_, 0x03);
    assert_eq!(u.inb(LCR_), 0x03);
    // The divisor writes reached neither THR nor IER.
    assert!(u.out.bytes().is_empty());
    assert_eq!(u.inb(IER_), 0x00);
    u.outb(LCR_, 0x83);
    assert_eq!(u.inb(0), 0x01);
}

#[test]
fn ier_keeps_the_low_nibble() {
    let mut u = Uart::new();
    u.outb(IER_, 0xFF);
    assert_eq!(u.inb(IER_), 0x0F);
}

#[test]
fn mcr_keeps_five_bits() {
    let mut u = Uart::new();
    u.outb(MCR_, 0xFF);
    assert_eq!(u.inb(MCR_), 0x1F);
}

#[test]
fn loopback_mirrors_modem_lines_and_data() {
    let mut u = Uart::new();
    u.outb(MCR_, 0x1A);
    assert_eq!(u.inb(MSR) & 0xF0, 0x90);
    u.outb(MCR_, 0x1F);
    assert_eq!(u.inb(MSR) & 0xF0, 0xF0);
    u.outb(MCR_, 0x10);
    u.outb(RX, 0x55);
    assert_eq!(u.inb(LSR) & 1, 1);
    assert_eq!(u.inb(RX), 0x55);
    assert_eq!(u.inb(LSR) & 1, 0);
    assert!(u.out.bytes().is_empty());
}

#[test]
fn iir_fifo_bits_follow_fcr() {
    let mut u = Uart::new();
    u.outb(IIR, 0x01);
    assert_eq!(u.inb(IIR), 0xC1);
    u.outb(IIR, 0x00);
    assert_eq!(u.inb(IIR), 0x01);
    // FCR bit 5 (64-byte FIFO on a 16750) is not stored: IIR bit 5 stays 0.
    u.outb(IIR, 0x21);
    assert_eq!(u.inb(IIR) & 0x20, 0);
    assert_eq!(u.dev.state().fcr, 0x01);
}

#[test]
fn thre_interrupt_and_reassertion() {
    let mut u = Uart::new();
    u.outb(IER_, 0x02);
    assert_eq!(u.edges(), 1);
    assert_eq!(u.inb(IIR), 0x02);
    assert_eq!(u.inb(IIR), 0x01);
    u.outb(IER_, 0x00);
    u.outb(IER_, 0x02);
    assert_eq!(u.edges(), 1);
    assert_eq!(u.inb(IIR), 0x02);
}

#[test]
fn transmit() {
    let mut u = Uart::new();
    u.outb(IER_, 0x02);
    u.inb(IIR);
    u.edges();
    u.outb(RX, b'A');
    assert_eq!(u.out.bytes(), b"A");
    assert_eq!(u.inb(LSR), 0x60);
    assert_eq!(u.edges(), 1);
    assert_eq!(u.inb(IIR), 0x02);
}

#[test]
fn receive_through_enqueue_input() {
    let mut u = Uart::new();
    u.outb(IER_, 0x01);
    assert_eq!(u.dev.enqueue_input(b"x"), 1);
    assert_eq!(u.edges(), 1);
    assert_eq!(u.inb(LSR), 0x61);
    assert_eq!(u.inb(IIR), 0x04);
    assert_eq!(u.inb(RX), b'x');
    assert_eq!(u.inb(LSR), 0x60);
    assert_eq!(u.inb(IIR), 0x01);
}

#[test]
fn enqueue_input_takes_only_what_fits() {
    let mut u = Uart::new();
    let input: Vec<u8> = (0..100).collect();
    assert_eq!(u.dev.enqueue_input(&input), RX_FIFO_CAPACITY);
    assert_eq!(u.dev.fifo_capacity_left(), 0);
    // The caller holds bytes 64.. and offers them again: nothing fits.
    assert_eq!(u.dev.enqueue_input(&input[RX_FIFO_CAPACITY..]), 0);
    // The guest reads two bytes; exactly two more fit.
    assert_eq!(u.inb(RX), 0);
    assert_eq!(u.inb(RX), 1);
    assert_eq!(u.dev.fifo_capacity_left(), 2);
    assert_eq!(u.dev.enqueue_input(&input[RX_FIFO_CAPACITY..]), 2);
    // Every accepted byte comes out, in order.
    let mut got = Vec::new();
    while u.inb(LSR) & 1 == 1 {
        got.push(u.inb(RX));
    }
    let expected: Vec<u8> = (2..66).collect();
    assert_eq!(got, expected);
    assert_eq!(u.dev.enqueue_input(&[]), 0);
}

#[test]
fn loopback_refuses_input_and_signals_when_it_ends() {
    let (irq, _probe) = line();
    let events = Arc::new(CountEvents::default());
    let mut dev =
        SerialDevice::with_events(irq, Arc::clone(&events), Box::new(SharedBuf::default()));
    outb(&mut dev, COM1, MCR_, 0x18);
    assert_eq!(dev.fifo_capacity_left(), 0);
    assert_eq!(dev.enqueue_input(b"abc"), 0);
    outb(&mut dev, COM1, MCR_, 0x08);
    assert_eq!(events.in_buffer_empty.load(Ordering::Relaxed), 1);
    assert_eq!(dev.enqueue_input(b"abc"), 3);
}

#[test]
fn fcr_clears_the_rx_fifo() {
    let (irq, _probe) = line();
    let events = Arc::new(CountEvents::default());
    let mut dev =
        SerialDevice::with_events(irq, Arc::clone(&events), Box::new(SharedBuf::default()));
    outb(&mut dev, COM1, IIR, 0x01);
    assert_eq!(dev.enqueue_input(b"stale"), 5);
    // Linux's serial8250_clear_fifos, with DLAB set to prove it is restored.
    outb(&mut dev, COM1, LCR_, 0x83);
    outb(&mut dev, COM1, IIR, 0x07);
    assert_eq!(inb(&mut dev, COM1, LCR_), 0x83);
    outb(&mut dev, COM1, LCR_, 0x03);
    assert_eq!(inb(&mut dev, COM1, LSR) & 1, 0);
    assert_eq!(dev.fifo_capacity_left(), RX_FIFO_CAPACITY);
    assert_eq!(events.in_buffer_empty.load(Ordering::Relaxed), 1);
    // Disabling the FIFO (a change of bit 0) also empties it.
    assert_eq!(dev.enqueue_input(b"more"), 4);
    outb(&mut dev, COM1, IIR, 0x00);
    assert_eq!(dev.fifo_capacity_left(), RX_FIFO_CAPACITY);
    // Rewriting the same enable bit without bit 1 keeps the data.
    assert_eq!(dev.enqueue_input(b"kept"), 4);
    outb(&mut dev, COM1, IIR, 0x00);
    assert_eq!(dev.fifo_capacity_left(), RX_FIFO_CAPACITY - 4);
}

#[test]
fn iir_reports_rx_before_thre_then_thre() {
    let mut u = Uart::new();
    u.outb(IIR, 0x01);
    u.outb(IER_, 0x03);
    u.dev.enqueue_input(b"ab");
    // vm-superio alone would read 0xC6 here ("line status").
    assert_eq!(u.inb(IIR), 0xC4);
    assert_eq!(u.inb(RX), b'a');
    assert_eq!(u.inb(RX), b'b');
    assert_eq!(u.inb(IIR), 0xC2);
    assert_eq!(u.inb(IIR), 0xC1);
}

#[test]
fn deferred_thre_is_dropped_by_a_thr_write_or_ier_change() {
    let mut u = Uart::new();
    u.outb(IER_, 0x03);
    u.dev.enqueue_input(b"a");
    assert_eq!(u.inb(IIR), 0x04);
    assert!(u.dev.state().thre_deferred);
    u.outb(RX, b'z');
    assert!(!u.dev.state().thre_deferred);
    // The THR write raised a fresh THRE cause of its own.
    assert_eq!(u.inb(IIR), 0x02);

    u.dev.enqueue_input(b"b");
    u.outb(IER_, 0x02);
    u.dev.enqueue_input(b"c");
    u.outb(IER_, 0x03);
    assert_eq!(u.inb(IIR), 0x04);
    u.outb(IER_, 0x01);
    assert!(!u.dev.state().thre_deferred);
}

/// docs/devices.md §3.3 step 2-4 and §3.5 vector 13: the accesses of Linux's
/// `autoconfig()` and `autoconfig_16550a()` (with the 16550A-variant probes
/// enabled), each with the answer that keeps Linux on "16550A".
#[test]
fn linux_autoconfig_detects_a_16550a() {
    let mut u = Uart::new();
    // IER existence test.
    let saved_ier = u.inb(IER_);
    u.outb(IER_, 0x00);
    assert_eq!(u.inb(IER_) & 0x0F, 0x00);
    u.outb(IER_, 0x0F);
    assert_eq!(u.inb(IER_) & 0x0F, 0x0F);
    u.outb(IER_, saved_ier);
    // Loopback test (COM4, or any port without SKIP_TEST).
    let saved_mcr = u.inb(MCR_);
    let saved_lcr = u.inb(LCR_);
    u.outb(MCR_, 0x1A);
    assert_eq!(u.inb(MSR) & 0xF0, 0x90);
    u.outb(MCR_, saved_mcr);
    // EFR reset, then FIFO identification.
    u.outb(LCR_, 0xBF);
    u.outb(IIR, 0x00);
    u.outb(LCR_, 0x00);
    u.outb(IIR, 0x01);
    assert_eq!(u.inb(IIR) >> 6, 3, "IIR[7:6] = 11: 16550A");
    // EFRv1 (ST16C650V1): offset 2 with LCR = 0x80 must not read 0.
    u.outb(LCR_, 0x80);
    assert_ne!(u.inb(IIR), 0);
    // EFRv2: same with LCR = 0xBF.
    u.outb(LCR_, 0xBF);
    assert_ne!(u.inb(IIR), 0);
    // National Semiconductor: EXCR1 (offset 2 with LCR = 0xE0) must not
    // follow MCR.LOOP.
    u.outb(LCR_, 0x00);
    let status1 = u.inb(MCR_);
    u.outb(LCR_, 0xE0);
    let mut status2 = u.inb(IIR);
    if (status2 ^ status1) & 0x10 == 0 {
        u.outb(LCR_, 0x00);
        u.outb(MCR_, status1 ^ 0x10);
        u.outb(LCR_, 0xE0);
        status2 = u.inb(IIR);
        u.outb(LCR_, 0x00);
        u.outb(MCR_, status1);
    }
    assert_eq!((status2 ^ status1) & 0x10, 0, "not an NS16550A");
    // TI16750: IIR bit 5 must not follow FCR bit 5, with or without DLAB.
    u.outb(LCR_, 0x00);
    u.outb(IIR, 0x21);
    let s1 = u.inb(IIR) & 0xE0;
    u.outb(IIR, 0x01);
    u.outb(LCR_, 0x80);
    u.outb(IIR, 0x21);
    let s2 = u.inb(IIR) & 0xE0;
    u.outb(IIR, 0x01);
    u.outb(LCR_, 0x00);
    assert_eq!((s1, s2), (0xC0, 0xC0), "not a 16750");
    // XScale: IER bit 6 (UUE) must not stick.
    let ier = u.inb(IER_);
    u.outb(IER_, ier & !0x40);
    assert_eq!(u.inb(IER_) & 0x40, 0);
    u.outb(IER_, ier | 0x40);
    assert_eq!(u.inb(IER_) & 0x40, 0, "not an XScale UART");
    u.outb(IER_, ier);
    // Restore, as autoconfig does at the end.
    u.outb(LCR_, saved_lcr);
    u.outb(MCR_, saved_mcr);
    u.outb(IIR, 0x01);
    u.outb(IIR, 0x07);
    u.outb(IIR, 0x00);
    u.inb(RX);
    u.outb(IER_, 0x00);
    assert_eq!(u.inb(LCR_), saved_lcr);
    assert_eq!(u.inb(MCR_), saved_mcr);
    assert!(u.out.bytes().is_empty());
}

/// docs/devices.md §3.3 step 5: `serial8250_do_startup` must set neither
/// `UART_BUG_THRE` nor `UART_BUG_TXEN`.
#[test]
fn linux_startup_sets_no_bug_flags() {
    let mut u = Uart::new();
    // Clear and disable the FIFOs, flush the registers.
    u.outb(IIR, 0x01);
    u.outb(IIR, 0x07);
    u.outb(IIR, 0x00);
    assert_ne!(u.inb(LSR), 0xFF, "LSR safety check");
    u.inb(RX);
    u.inb(IIR);
    u.inb(MSR);
    u.outb(LCR_, 0x03);
    u.outb(MCR_, 0x0B);
    // THRE test.
    assert_ne!(u.inb(LSR) & 0x20, 0);
    u.outb(IER_, 0x02);
    let iir1 = u.inb(IIR);
    u.outb(IER_, 0x00);
    u.outb(IER_, 0x02);
    let iir2 = u.inb(IIR);
    u.outb(IER_, 0x00);
    let bug_thre = iir1 & 0x01 == 0 && iir2 & 0x01 != 0;
    assert!(!bug_thre, "iir1 {iir1:#x} iir2 {iir2:#x}");
    // TXEN test.
    u.outb(IER_, 0x02);
    let lsr = u.inb(LSR);
    let iir = u.inb(IIR);
    u.outb(IER_, 0x00);
    let bug_txen = lsr & 0x40 != 0 && iir & 0x01 != 0;
    assert!(!bug_txen, "lsr {lsr:#x} iir {iir:#x}");
    // set_termios: 115200 8N1, FIFO on with trigger 8.
    u.outb(LCR_, 0x83);
    u.outb(0, 0x01);
    u.outb(1, 0x00);
    u.outb(LCR_, 0x03);
    u.outb(IIR, 0x81);
    u.outb(IER_, 0x05);
    assert_eq!(u.inb(IIR), 0xC1);
}

#[test]
fn refuses_wide_and_out_of_range_accesses() {
    let mut u = Uart::new();
    let mut word = [0u8; 2];
    u.dev.pio_read(PioAddress(COM1), LSR, &mut word);
    assert_eq!(word, [0xFF, 0xFF]);
    u.dev.pio_write(PioAddress(COM1), SCR, &[1, 2]);
    assert_eq!(u.inb(SCR), 0);
    u.dev.pio_write(PioAddress(COM1), RX, &[]);
    assert_eq!(u.inb(8), 0xFF);
    assert_eq!(u.inb(0x100), 0xFF);
    u.outb(0x107, 0x12);
    assert_eq!(u.inb(SCR), 0);
    assert_eq!(u.dev.invalid_accesses(), 6);
    assert!(u.out.bytes().is_empty());
    assert_eq!(u.dev.read(8), 0xFF);
    u.dev.write(8, 0);
}

#[test]
fn broken_output_loses_the_byte_but_not_the_interrupt() {
    let (irq, probe) = line();
    let mut dev = SerialDevice::new(irq, Box::new(BrokenPipe));
    outb(&mut dev, COM1, IER_, 0x02);
    inb(&mut dev, COM1, IIR);
    fired(&probe);
    outb(&mut dev, COM1, RX, b'x');
    outb(&mut dev, COM1, RX, b'y');
    assert_eq!(dev.lost_output_bytes(), 2);
    assert_eq!(fired(&probe), 1);
    assert_eq!(inb(&mut dev, COM1, LSR), 0x60);
}

#[test]
fn state_round_trips() {
    let mut u = Uart::new();
    u.outb(IIR, 0x81);
    u.outb(SCR, 0x42);
    u.outb(IER_, 0x03);
    u.dev.enqueue_input(b"hi");
    u.inb(IIR);
    let state = u.dev.state();
    assert!(state.thre_deferred);
    let (irq, probe) = line();
    let mut copy =
        SerialDevice::from_state(&state, irq, NoEvents, Box::new(SharedBuf::default())).unwrap();
    assert_eq!(copy.state(), state);
    assert_eq!(inb(&mut copy, COM1, SCR), 0x42);
    assert_eq!(inb(&mut copy, COM1, RX), b'h');
    drop(probe);

    let mut bad = SerialDeviceState::default();
    bad.uart.in_buffer = vec![0; RX_FIFO_CAPACITY + 1];
    let (irq, _probe) = line();
    let err =
        SerialDevice::from_state(&bad, irq, NoEvents, Box::new(SharedBuf::default())).unwrap_err();
    assert!(matches!(err, Error::QueueOverflow { len: 65, .. }), "{err}");
}

#[test]
fn restored_loopback_refuses_input() {
    let mut state = SerialDeviceState::default();
    state.uart.modem_control = 0x18;
    let (irq, _probe) = line();
    let mut dev =
        SerialDevice::from_state(&state, irq, NoEvents, Box::new(SharedBuf::default())).unwrap();
    assert_eq!(dev.enqueue_input(b"a"), 0);
}

#[test]
fn debug_output_names_the_device() {
    let u = Uart::new();
    let text = format!("{:?}", u.dev);
    assert!(text.starts_with("SerialDevice"), "{text}");
}

/// Regression: reading IIR with LCR.DLAB set must not lose a pending THRE
/// (offset 1 reads DLM, not IER, while DLAB is set).
#[test]
fn iir_read_with_dlab_set_keeps_the_deferred_thre() {
    for dlab in [false, true] {
        let mut u = Uart::new();
        u.outb(IER_, 0x03); // IER: RX data and THR empty
        assert_eq!(u.dev.enqueue_input(b"z"), 1);
        if dlab {
            u.outb(LCR_, 0x83); // LCR: DLAB, 8N1
        }
        assert_eq!(u.inb(IIR) & 0x0f, 0x04, "RX data first (dlab {dlab})");
        if dlab {
            u.outb(LCR_, 0x03);
        }
        assert_eq!(u.inb(RX), b'z');
        assert_eq!(u.inb(IIR) & 0x0f, 0x02, "then THR empty (dlab {dlab})");
    }
}
