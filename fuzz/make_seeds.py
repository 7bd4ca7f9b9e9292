#!/usr/bin/env python3
"""Writes the hand-made seed inputs in fuzz/corpus/<target>/.

Each seed is a short, meaningful sequence in the target's input encoding
(see the target's source in fuzz_targets/): what a guest driver, the
console, QMP client or a kernel image would give, so the fuzzer starts from
inputs that reach deep states. Run it again after changing an encoding:
`python3 fuzz/make_seeds.py` (it replaces the seed folders).
"""

import os
import shutil
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
SEEDS = {}


def seed(target, name, data):
    SEEDS.setdefault(target, {})[name] = bytes(data)


def u16(v):
    return struct.pack("<H", v & 0xFFFF)


def u32(v):
    return struct.pack("<I", v & 0xFFFFFFFF)


def u64(v):
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


# Access::decode: shape (bit 0 write, bits 1-3 size class: 0-4 one byte,
# 5 two, 6 four; bit 4 full 16-bit offset), the offset, the data.
def wr(offset, value):
    return bytes([0x01, offset, value])


def rd(offset):
    return bytes([0x00, offset])


def wr16(offset, value):
    return bytes([0x01 | (5 << 1), offset]) + u16(value)


# ---- serial: op byte (0 = console input, else an access at COM1).
def serial_ops(*accesses):
    return b"".join(b"\x01" + a for a in accesses)


linux_init = serial_ops(
    wr(3, 0x80), wr(0, 0x01), wr(1, 0x00), wr(3, 0x03),  # 115200 8N1
    wr(2, 0xC7), wr(4, 0x0B), wr(1, 0x0F),  # FIFOs, OUT2, all interrupts
    rd(2), rd(5), wr(0, ord("h")), wr(0, ord("i")), rd(2), rd(5),
)
seed("serial", "linux-init", b"\x00" + linux_init)
seed("serial", "console-input",
     b"\x00" + linux_init + b"\x00\x05hello" + serial_ops(rd(5), rd(0), rd(2), rd(0), rd(5)))
seed("serial", "loopback",
     b"\x00" + serial_ops(wr(4, 0x10), wr(0, 0x41), rd(5), rd(0), wr(4, 0x00))
     + b"\x00\x40" + b"x" * 64 + serial_ops(wr(2, 0x02), rd(5)))
seed("serial", "broken-output",
     b"\x01" + serial_ops(wr(1, 0x02), wr(0, 0x41), rd(2), wr(7, 0x55), rd(7)))


# ---- i8042: op % 16: 0 reset, 1 one 8-port range at 0x60, even 0x60, odd 0x64.
def data(a):
    return b"\x02" + a


def cmd(a):
    return b"\x03" + a


seed("i8042", "linux-probe",
     cmd(wr(0, 0x20)) + data(rd(0)) + cmd(wr(0, 0x60)) + data(wr(0, 0x47))
     + cmd(wr(0, 0xAA)) + data(rd(0)) + cmd(wr(0, 0xAB)) + data(rd(0))
     + cmd(rd(0)) + cmd(wr(0, 0xAE)))
seed("i8042", "keyboard",
     data(wr(0, 0xFF)) + data(rd(0)) + data(rd(0)) + data(wr(0, 0xF2))
     + data(rd(0)) + data(rd(0)) + data(rd(0)) + data(wr(0, 0xED)) + data(wr(0, 0x07)))
seed("i8042", "reset-fe", cmd(wr(0, 0xFE)) + cmd(wr(0, 0xFE)) + b"\x00" + cmd(wr(0, 0xFE)))
seed("i8042", "output-port",
     cmd(wr(0, 0xD0)) + data(rd(0)) + cmd(wr(0, 0xD1)) + data(wr(0, 0xFE))
     + cmd(wr(0, 0xD3)) + data(wr(0, 0x5A)) + data(rd(0)) + b"\x01" + wr(4, 0xD2))


# ---- acpi_pm: op % 8: 0 power button, 1 reset, 2-4 event block, 5-7 control.
def evt(a):
    return b"\x02" + a


def cnt(a):
    return b"\x05" + a


seed("acpi_pm", "power-button",
     evt(wr(3, 0x01)) + b"\x00" + evt(rd(1)) + evt(wr(1, 0x01)) + evt(rd(1)) + cnt(rd(0)))
seed("acpi_pm", "s5", cnt(rd(0)) + cnt(wr16(0, 0x3401)) + cnt(wr16(0, 0x2C01)))
seed("acpi_pm", "wide", evt(bytes([0x01 | (6 << 1), 0]) + u32(0xFFFFFFFF)) + evt(bytes([0x0C, 0])) + b"\x01")

# ---- pvpanic and port 0x80: accesses only.
seed("pvpanic", "panic", rd(0) + wr(0, 0x02) + wr(0, 0x01) + wr(0, 0xF0))
seed("port80", "post-codes", wr(0, 0x55) + wr(0, 0xAA) + rd(0) + wr16(0, 0x1234))


# ---- pit: op % 16: 0-1 run (u32 ns, shift), 2 leap (i64, shift), 3 stop,
# 4 start, 5 reset, 6-7 port 0x61, else a PIT access.
def pit(a):
    return b"\x08" + a


def run(ns, shift=0):
    return b"\x00" + u32(ns) + bytes([shift])


def leap(ns, shift=0):
    return b"\x02" + u64(ns) + bytes([shift])


seed("pit", "hz100",
     pit(wr(3, 0x34)) + pit(wr(0, 0x9C)) + pit(wr(0, 0x2E)) + run(30_000_000)
     + pit(wr(3, 0x00)) + pit(rd(0)) + pit(rd(0)))
seed("pit", "calibrate-ch2",
     b"\x06" + wr(0, 0x01) + pit(wr(3, 0xB0)) + pit(wr(2, 0xFF)) + pit(wr(2, 0xFF))
     + b"\x06" + rd(0) + run(50_000_000) + b"\x06" + rd(0) + pit(wr(3, 0xE8)) + pit(rd(2)))
seed("pit", "oneshot",
     pit(wr(3, 0x30)) + pit(wr(0, 0x10)) + pit(wr(0, 0x00)) + run(1_000_000)
     + b"\x03" + leap(10**12) + b"\x04" + b"\x05" + run(60_000_000))
seed("pit", "fast-periodic",
     pit(wr(3, 0x36)) + pit(wr(0, 0x02)) + pit(wr(0, 0x00)) + run(20_000_000) + leap(10**9))

# Wall times are an i64 and a selector byte (see wall_time in src/lib.rs);
# selector 7 takes the i64 as it is.
# ---- rtc: wall (i64, selector), pc config (u64, u64, u32), then ops % 16:
# 0 run, 1 run with an ISR reading C, 2 leap, 3 wall step (i64, selector),
# 4 stop, 5 start, 6 reset, else an access at 0x70.
WALL_2026 = 1_780_000_000 * 10**9
rtc_head = u64(WALL_2026) + b"\x07" + u64(512 << 20) + u64(0) + u32(2)


def rtc(a):
    return b"\x07" + a


def rtc_reg(index, value=None):
    return rtc(wr(0, index)) + (rtc(rd(1)) if value is None else rtc(wr(1, value)))


read_time = b"".join(rtc_reg(r) for r in (0x0A, 0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32))
seed("rtc", "read-time", rtc_head + read_time)
seed("rtc", "periodic-1024",
     rtc_head + rtc_reg(0x0A, 0x26) + rtc_reg(0x0B, 0x42)
     + b"\x01" + u32(50_000_000) + b"\x00" + rtc_reg(0x0C))
seed("rtc", "update-and-alarm",
     rtc_head + rtc_reg(0x01, 0xFF) + rtc_reg(0x03, 0xFF) + rtc_reg(0x05, 0xFF)
     + rtc_reg(0x0B, 0x32) + b"\x00" + u32(60_000_000) + b"\x00" + rtc_reg(0x0C)
     + leap(3 * 10**9) + rtc_reg(0x0C))
seed("rtc", "set-time",
     rtc_head + rtc_reg(0x0B, 0x82) + rtc_reg(0x00, 0x30) + rtc_reg(0x02, 0x59)
     + rtc_reg(0x04, 0x23) + rtc_reg(0x07, 0x31) + rtc_reg(0x08, 0x12) + rtc_reg(0x09, 0x99)
     + rtc_reg(0x32, 0x20) + rtc_reg(0x0B, 0x02) + read_time)
seed("rtc", "wall-steps",
     rtc_head + rtc_reg(0x0B, 0x12) + b"\x03" + u64(WALL_2026 - 3600 * 10**9) + b"\x07"
     + rtc_reg(0x0C) + b"\x03" + u64(WALL_2026 + 86400 * 10**9) + b"\x07" + read_time
     + b"\x04" + leap(10**10) + b"\x05" + b"\x06" + read_time)

# ---- pc_bus: wall (i64, selector), flags (bit 0: KVM's PIT, bit 1: broken
# output), memory (u64), cpus (u32); ops % 32: 0 run, 1 leap, 2 wall step,
# 3 console input, 4 power button, 5 reset, 6 stop, 7 start, 8 MMIO (where %
# 4: 0 any u64, 1 ECAM + u32, 2 WDAT window + u8, 3 i6300esb BAR + u8; length
# % 9; the bytes written), else a port access: op bit 3 clear = a PC port by
# index (shape % 33), bit 0 = write.
PORT_INDEX = {p: i for i, p in enumerate(
    [0x3F8 + i for i in range(8)] + [0x60, 0x64] + [0x600 + i for i in range(6)]
    + [0x80, 0x505, 0x70, 0x71] + [0xCF8 + i for i in range(8)]
    + [0x40, 0x41, 0x42, 0x43, 0x61])}


def outb(port, value):
    return bytes([17, PORT_INDEX[port]]) + bytes([value])


def inb(port):
    return bytes([16, PORT_INDEX[port]])


def pc_run(ns):
    return b"\x00" + u32(ns) + b"\x00"


pc_head = u64(WALL_2026) + b"\x07" + b"\x00" + u64(512 << 20) + u32(1)
boot = (
    outb(0x3FB, 0x80) + outb(0x3F8, 1) + outb(0x3F9, 0) + outb(0x3FB, 3) + outb(0x3FA, 0xC7)
    + outb(0x3FC, 0x0B) + outb(0x3F9, 0x0F) + outb(0x3F8, ord("L")) + inb(0x3FD)
    + outb(0x43, 0x34) + outb(0x40, 0x9C) + outb(0x40, 0x2E) + pc_run(20_000_000)
    + outb(0x70, 0x0A) + inb(0x71) + outb(0x70, 0x00) + inb(0x71)
    + outb(0x64, 0x20) + inb(0x60) + outb(0x64, 0xAA) + inb(0x60)
    + outb(0x61, 0x01) + inb(0x61) + outb(0x80, 0x00) + inb(0x505)
)
seed("pc_bus", "linux-boot", pc_head + boot)
seed("pc_bus", "power-button-then-s5",
     pc_head + outb(0x603, 0x01) + b"\x04" + inb(0x601) + outb(0x601, 0x01)
     + bytes([17 + 8, 0xA0]) + u16(0x604) + u16(0x3401) + b"\x05")
seed("pc_bus", "reset-and-console",
     pc_head + b"\x03\x04ping" + inb(0x3F8) + inb(0x3FD) + outb(0x64, 0xFE) + b"\x05"
     + outb(0x64, 0xFE) + b"\x06" + b"\x01" + u64(10**10) + b"\x00" + b"\x07")
seed("pc_bus", "kvm-pit",
     u64(0) + b"\x07" + b"\x03" + u64(4 << 30) + u32(8) + inb(0x40) + inb(0x61) + outb(0x43, 0x34)
     + b"\x08" + b"\x00" + u64(0xFEE00000) + b"\x04" + u32(0))


def wide(port):
    """The shape byte of a 4-byte access to `port` (shape >> 5 == 6)."""
    return next(s for s in range(0xC0, 0xE0) if s % len(PORT_INDEX) == PORT_INDEX[port])


def outl(port, value):
    return bytes([17, wide(port)]) + u32(value)


# The i6300esb (flags bit 2) in slot 31: its BAR sized and placed, memory
# decoding on, then reads through the BAR, the ECAM and the WDAT window.
esb = 0x8000_0000 | (31 << 11)
seed("pc_bus", "i6300esb-bar",
     u64(WALL_2026) + b"\x07" + b"\x04" + u64(512 << 20) + u32(1)
     + outl(0xCF8, esb | 0x10) + outl(0xCFC, 0xFFFFFFFF) + bytes([16, wide(0xCFC)])
     + outl(0xCF8, esb | 0x10) + outl(0xCFC, 0xDFFFF000)
     + outl(0xCF8, esb | 0x04) + outl(0xCFC, 0x0002)
     + b"\x08\x03\x0c\x02" + u16(0)
     + b"\x08\x01" + u32(31 << 15) + b"\x04" + u32(0)
     + b"\x08\x02\x10\x01" + b"\x02")


# ---- qmp_framer: limit byte (0 = 64 KiB), then chunks (length, bytes).
def chunks(*parts):
    return b"".join(bytes([len(p)]) + p for p in parts)


seed("qmp_framer", "requests",
     b"\x00" + chunks(b'{"execute":"qmp_capabilities"}', b'{"execute":"query-status","id":[1,{"a":"}"}]}'))
seed("qmp_framer", "split", b"\x00" + chunks(b'{"exec', b'ute": "st', b'op"}  ', b'{"x":"\\"}{"}'))
seed("qmp_framer", "scalars", b"\x00" + chunks(b'42 nul\n"str"} ] {"ok":1}', b"abc{}"))
seed("qmp_framer", "too-long", b"\x08" + chunks(b'{"execute":"query-version"}{"a":1}', b"[[[[[[[[[[]]]]]]]]]]"))

# ---- qmp_session: chunks (length, bytes).
seed("qmp_session", "negotiate-and-run",
     chunks(b'{"execute":"qmp_capabilities"}', b'{"execute":"query-status","id":"a"}',
            b'{"execute":"stop"}{"execute":"cont","arguments":{}}'))
seed("qmp_session", "errors",
     chunks(b'{"execute":"stop"}', b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}',
            b'{"execute":"qmp_capabilities"}{"execute":"nope","id":7}',
            b'[1]{"execute":1}{"arguments":{}}{"execute":"quit","extra":0}{"execute":"qmp_capabilities"}'))
seed("qmp_session", "split",
     chunks(b'{"exe', b'cute":"qmp_capab', b'ilities"}{"execute":"system_reset","id":{"x":[1,2]}}'))


# ---- kernel: memory (16 + n MiB), cpus, initrd (u16 length, bytes),
# command line (u16 length, bytes), then the image.
def bzimage(version=0x20F, xloadflags=0x3):
    setup_sects = 4
    img = bytearray((setup_sects + 1) * 512)

    def put(off, b):
        img[off:off + len(b)] = b

    put(0x1F1, bytes([setup_sects]))
    put(0x1FE, u16(0xAA55))
    put(0x202, b"HdrS")
    put(0x206, u16(version))
    put(0x211, bytes([0x01]))  # LOADED_HIGH
    put(0x214, u32(0x100000))  # code32_start
    put(0x22C, u32(0x7FFFFFFF))  # initrd_addr_max
    put(0x230, u32(0x200000))  # kernel_alignment
    put(0x234, bytes([1, 21]))  # relocatable, min_alignment
    put(0x236, u16(xloadflags))
    put(0x238, u32(2047))  # cmdline_size
    put(0x258, u64(0x1000000))  # pref_address
    put(0x260, u32(0x400000))  # init_size
    return bytes(img) + b"protected-mode kernel stands in here"


def elf(load, payload, memsz, entry, pvh_entry=None):
    note = b""
    if pvh_entry is not None:
        note = u32(4) + u32(4) + u32(18) + b"Xen\0" + u32(pvh_entry)
    phnum = 1 + (1 if note else 0)
    note_off = 64 + phnum * 56
    data_off = note_off + len(note)
    ehdr = (b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8) + u16(2) + u16(62) + u32(1)
            + u64(entry) + u64(64) + u64(0) + u32(0) + u16(64) + u16(56) + u16(phnum)
            + bytes(6))
    load_ph = u32(1) + u32(7) + u64(data_off) + u64(load) + u64(load) + u64(len(payload)) \
        + u64(memsz) + u64(0x1000)
    phs = load_ph
    if note:
        phs += u32(4) + u32(4) + u64(note_off) + u64(0) + u64(0) + u64(len(note)) \
            + u64(len(note)) + u64(4)
    return ehdr + phs + note + payload


def kernel_seed(image, mem=48, cpus=2, initrd=b"", cmdline=b"console=ttyS0"):
    return bytes([mem, cpus]) + u16(len(initrd)) + initrd + u16(len(cmdline)) + cmdline + image


hlt = b"\xf4" * 4 + b" vmlinux stands in here"
seed("kernel", "bzimage", kernel_seed(bzimage(), initrd=b"070701" + bytes(26)))
seed("kernel", "bzimage-old-protocol", kernel_seed(bzimage(version=0x205, xloadflags=0), mem=0))
seed("kernel", "elf-pvh", kernel_seed(elf(0x1000000, hlt, 0x2000, 0x1000040, 0x1000100), initrd=b"x" * 100))
seed("kernel", "elf", kernel_seed(elf(0x1000000, hlt, 0x2000, 0x1000040), cpus=254, cmdline=b"  quiet  "))

# ---- boot_params: arbitrary numbers; two plausible sets.
seed("boot_params", "typical",
     u64(512 << 20) + b"\x00" + u64(1 << 40) + u64(4096) + u64(0x7FFFFFFF) + u64(512 << 20)
     + u64(0x1400000) + b"\x01" + u64(0x100000) + u16(0x20F) + u32(2047) + u32(0x7FFFFFFF)
     + u64(0x1400000) + b"\x00" + u16(13) + b"console=ttyS0" + b"\x01" + u64(0x1F000000)
     + u64(4096) + b"\x01" + u64(0xE0000) + b"\x04" + u64(0) + u64(0x9FC00) + b"\x00"
     + u64(0x9FC00) + u64(0x60400) + b"\x01" + u64(0x100000) + u64(511 << 20) + b"\x00"
     + u64(1 << 32) + u64(1 << 30) + b"\x00")
seed("boot_params", "elf-pvh",
     u64(6 << 30) + b"\x00" + u64(8 << 30) + u64(1 << 20) + u64(0x37FFFFFF) + u64(6 << 30)
     + u64(0x1002000) + b"\x02" + u64(0x1000100) + u64(0x1002000) + b"\x00" + u16(4) + b"ro q"
     + b"\x00" + b"\x00" + b"\x81")



# snapshot_file: a small snapshot in the file format (vmm-pc's
# snapshot/format.rs): magic, version, sections with CRC-32s.
def snap_section(name, data):
    n = name.encode()
    return u16(len(n)) + n + u64(len(data)) + u32(zlib.crc32(data)) + data


SNAP_SHAPE = (b'{"cpus":1,"ram":[[0,4096]],"kvm_pit":false,'
              b'"devices":[["serial0","isa-serial"]]}')
# Version 2: a ram@ section says where the region's image is (offset in
# the image area, length); the image follows at the next page boundary.
SNAP_HEAD = (b"VMMSNAP\x00" + u32(2) + snap_section("shape", SNAP_SHAPE)
             + snap_section("vcpus", b"[]") + snap_section("ram@0", u64(0) + u64(4096)) + u16(0))
seed("snapshot_file", "small",
     SNAP_HEAD.ljust(4096, b"\0") + bytes([0x90]) * 4096)

# virtio_chains: the queue size byte (1 << (b % 9); bit 7: EVENT_IDX, bit
# 6: a read-only disk), then the descriptor table (0x1000 bytes), then the
# available ring (flags, idx, heads).
NEXT, WRITE, INDIRECT = 1, 2, 4


def desc(addr, length, flags, nxt):
    return u64(addr) + u32(length) + u16(flags) + u16(nxt)


def ring_seed(descs, heads, first=4):
    table = b"".join(descs).ljust(0x1000, b"\0")
    return bytes([first]) + table + u16(0) + u16(len(heads)) + b"".join(u16(h) for h in heads)


# A virtio-blk read: header, 512 bytes of data, status.
seed("virtio_chains", "blk_read", ring_seed(
    [desc(0x8000, 16, NEXT, 1), desc(0x9000, 512, NEXT | WRITE, 2), desc(0xA000, 1, WRITE, 0)], [0]))
# A transmit frame, a receive buffer and an indirect table.
seed("virtio_chains", "net_tx_rx_indirect", ring_seed(
    [desc(0x8000, 72, 0, 0), desc(0x9000, 1526, WRITE, 0), desc(0xC000, 32, INDIRECT, 0)],
    [0, 1, 2], first=0x85))
# A chain that loops back on itself.
seed("virtio_chains", "loop", ring_seed([desc(0x8000, 16, NEXT, 1), desc(0x9000, 16, NEXT, 0)], [0, 1]))
# migration_stream: a small live-migration stream (vmm-pc's
# snapshot/stream.rs) for the target's machine (1 vCPU, 64 KiB of RAM):
# pages (address, kind 0 zeroes / 1 a page), then the state sections.
MIG_SHAPE = b'{"cpus":1,"ram":[[0,65536]],"kvm_pit":false,"devices":[]}'
MIG_PAGES = u64(0x1000) + b"\x01" + bytes([0x90]) * 4096 + u64(0x2000) + b"\x00"
seed("migration_stream", "small",
     b"VMMMIGR\x00" + u32(1) + snap_section("shape", MIG_SHAPE)
     + snap_section("pages", MIG_PAGES)
     + b"".join(snap_section(n, b"{}") for n in
                ["vcpus", "irqchip", "kvm-pit", "clocks", "devices"])
     + u16(0))
# The same of a guest in S3: the optional runstate section at the end.
seed("migration_stream", "suspended",
     b"VMMMIGR\x00" + u32(1) + snap_section("shape", MIG_SHAPE)
     + snap_section("pages", MIG_PAGES)
     + b"".join(snap_section(n, b"{}") for n in
                ["vcpus", "irqchip", "kvm-pit", "clocks", "devices"])
     + snap_section("runstate", b'{"state":"suspended"}')
     + u16(0))

# vsock_packet: the guest's CID (one byte), then a transmit chain's bytes:
# the 44-byte header (src_cid, dst_cid, src_port, dst_port, len, type, op,
# flags, buf_alloc, fwd_cnt) and the payload.
def vsock_hdr(src, dst, sport, dport, length, op, typ=1, flags=0, buf_alloc=65536, fwd=0):
    return (u64(src) + u64(dst) + u32(sport) + u32(dport) + u32(length) + u16(typ)
            + u16(op) + u32(flags) + u32(buf_alloc) + u32(fwd))


seed("vsock_packet", "request", bytes([3]) + vsock_hdr(3, 2, 1000, 5678, 0, 1))
seed("vsock_packet", "rw", bytes([3]) + vsock_hdr(3, 2, 1000, 5678, 5, 5) + b"hello")
seed("vsock_packet", "shutdown", bytes([3]) + vsock_hdr(3, 2, 1000, 5678, 0, 4, flags=3))
seed("vsock_packet", "credit-request", bytes([3]) + vsock_hdr(3, 2, 1000, 5678, 0, 7))
seed("vsock_packet", "wrong-dst", bytes([3]) + vsock_hdr(3, 9, 1000, 5678, 0, 1))


# ---- irqchip: op % 16: 0-3 a PIC port access (port index into 0x20,
# 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x22, 0x4D2; width class, 0-4 one byte;
# odd = write, then the bytes), 4-5 a PIC line (irq, level), 6 an
# acknowledge, 7-10 an IO-APIC access (offset class: 0 IOREGSEL, 2 IOWIN,
# 4 then even = EOI; width class 5 = four bytes; odd = write, the bytes),
# 11-12 an IO-APIC pin (pin, level), 13 an EOI (vector), 14 a snapshot,
# 15 a reset (even: the PICs, odd: the IO-APIC).
PIC_PORTS = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1]


def pic_wr(port, value):
    return bytes([0, PIC_PORTS.index(port), 0, 1, value])


def pic_rd(port):
    return bytes([0, PIC_PORTS.index(port), 0, 0])


def pic_line(irq, level):
    return bytes([4, irq, level])


def ioapic_wr(offset, value):
    cls = {0x00: 0, 0x10: 2}[offset]
    return bytes([7, cls, 5, 1]) + u32(value)


def ioapic_rd(offset):
    cls = {0x00: 0, 0x10: 2}[offset]
    return bytes([7, cls, 5, 0])


def ioapic_entry(pin, low, high):
    return (ioapic_wr(0x00, 0x10 + 2 * pin) + ioapic_wr(0x10, low)
            + ioapic_wr(0x00, 0x11 + 2 * pin) + ioapic_wr(0x10, high))


# Linux's init of both 8259s (vectors 0x30 and 0x38, cascade on IRQ 2, 8086
# mode), the timer unmasked, level IRQ 9 by the ELCR.
linux_pics = (pic_wr(0x20, 0x11) + pic_wr(0x21, 0x30) + pic_wr(0x21, 0x04) + pic_wr(0x21, 0x01)
              + pic_wr(0xA0, 0x11) + pic_wr(0xA1, 0x38) + pic_wr(0xA1, 0x02) + pic_wr(0xA1, 0x01)
              + pic_wr(0x21, 0xFA) + pic_wr(0xA1, 0xFD) + pic_wr(0x4D1, 0x02))
seed("irqchip", "linux-pics",
     linux_pics + pic_line(0, 1) + b"\x06" + pic_wr(0x20, 0x20) + pic_line(0, 0)
     + pic_line(9, 1) + b"\x06" + pic_wr(0xA0, 0x20) + pic_wr(0x20, 0x20)
     + pic_wr(0x20, 0x0B) + pic_rd(0x20) + pic_wr(0x20, 0x0C) + pic_rd(0x20) + b"\x0e")
seed("irqchip", "spurious", linux_pics + b"\x06" + pic_wr(0x20, 0x0B) + pic_rd(0x20))
# The IO-APIC: the serial port's pin 4 level-triggered, vector 0x24, CPU
# 0; raised, EOI'd while still high (delivered again), lowered; the timer
# on pin 2 edge, masked and unmasked; the version register read.
seed("irqchip", "ioapic-level",
     ioapic_wr(0x00, 0x01) + ioapic_rd(0x10)
     + ioapic_entry(4, 0x0000_8024, 0x0000_0000)
     + bytes([11, 4, 1]) + bytes([13, 0x24]) + bytes([11, 4, 0]) + bytes([13, 0x24])
     + ioapic_entry(2, 0x0001_0030, 0x0100_0000) + bytes([11, 2, 1, 11, 2, 0])
     + ioapic_entry(2, 0x0000_0030, 0x0100_0000) + bytes([11, 2, 1]) + b"\x0e"
     + bytes([11, 4, 1]))


# ---- virtio_pci: op % 16: 0-6 a BAR 0 access (offset byte, then its
# class: 0-1 common configuration (offset % 0x38), 2 ISR, 3 device
# configuration, 4 notifications, 5 a 16-bit offset; width class 0-1 one
# byte, 2-3 two, 4-5 four, 6 eight; odd = write, the bytes), 7-8 an MSI-X
# BAR access (class 0-2 then an offset byte; width; write; bytes), 9-10 a
# configuration-space access (class 0 = MSI-X control, 1-2 0x40 + a byte;
# width; write; bytes), 11-12 the device signals (pick: 0 configuration,
# 1 needs reset, else a queue), 13 activations refused or not, 14 a
# machine reset, 15 a queue set up at once (queue, size shift, address).
def vp_bar0(offset, width_class, value, width):
    return bytes([0, offset, 0, width_class, 1]) + value.to_bytes(width, "little")


def vp_common(offset, value, width):
    cls = {1: 0, 2: 2, 4: 4, 8: 6}[width]
    return vp_bar0(offset, cls, value, width)


def vp_msix(offset, value, width):
    cls = {4: 4, 8: 6}[width]
    return bytes([7, 0, offset, cls, 1]) + value.to_bytes(width, "little")


def vp_status(v):
    return vp_common(0x14, v, 1)


vp_init = (
    bytes([9, 0, 2, 1]) + u16(0x8000)  # MSI-X on
    + b"".join(vp_msix(v * 16, 0xFEE0_0000, 8) + vp_msix(v * 16 + 8, 0x40 + v, 4)
               + vp_msix(v * 16 + 12, 0, 4) for v in range(4))
    + vp_status(1) + vp_status(3)
    + vp_common(0x08, 0, 4) + vp_common(0x0C, 0x3000_0001, 4)
    + vp_common(0x08, 1, 4) + vp_common(0x0C, 1, 4)
    + vp_status(0x0B) + vp_common(0x10, 0, 2)
    + b"".join(vp_common(0x16, q, 2) + vp_common(0x1A, q + 1, 2)
               + bytes([15, q, 3]) + u16(0x1000 * (q + 1)) for q in range(3))
    + vp_status(0x0F))
seed("virtio_pci", "linux-init",
     vp_init + bytes([11, 2, 11, 3, 11, 0])
     + bytes([0, 0, 4, 3, 1]) + u16(0)  # a notification
     + bytes([9, 0, 2, 1]) + u16(0xC000) + bytes([11, 2])  # masked: pending
     + bytes([9, 0, 2, 1]) + u16(0x8000)  # unmasked: sent
     + bytes([11, 1]) + vp_status(0))
seed("virtio_pci", "refused", bytes([13]) + vp_init + vp_status(0) + bytes([13, 14]))


# ---- watchdogs: op % 16: 0-2 run (u32 ns, shift), 3 leap (i64, shift), 4
# VM stop, 5 VM start, 6-7 an IB700 port (offset % 4 from 0x441; width
# class 0-1 one byte; even read, odd write, the bytes), 8-9 the 6300ESB's
# configuration space (class 0-1: 0x60 + byte % 12; width; rw; bytes),
# 10-12 its BAR (offset % 24; width; rw; bytes), 13 its fixed window
# (offset % 40; ...), 14 a machine reset, 15 a keep-alive (unlock, reload).
def esb_bar(offset, value):
    return bytes([10, offset, 4, 1]) + u32(value)


def esb_cfg(offset, value, width):
    cls = {1: 0, 2: 2}[width]
    return bytes([8, 0, offset - 0x60, cls, 1]) + value.to_bytes(width, "little")


def wd_run(ns):
    return bytes([0]) + u32(ns) + bytes([0])


# Linux's i6300esb driver: 1 kHz scale, preloads of 30 s (15000 ticks each
# stage at about 1 ms... halves), enabled, kept alive, then left to expire.
esb_start = (esb_cfg(0x60, 0x0000, 2)
             + esb_bar(0x0C, 0x80) + esb_bar(0x0C, 0x86) + esb_bar(0x00, 2000)
             + esb_bar(0x0C, 0x80) + esb_bar(0x0C, 0x86) + esb_bar(0x04, 2000)
             + esb_cfg(0x68, 0x02, 1))
seed("watchdogs", "esb-linux",
     esb_start + wd_run(1_000_000_000) + b"\x0f" + wd_run(3_000_000_000)
     + wd_run(3_000_000_000) + b"\x0e" + esb_start + bytes([3]) + u64(1 << 40) + bytes([0]))
seed("watchdogs", "ib700",
     bytes([6, 2, 0, 1, 0x0E]) + wd_run(1_000_000_000) + bytes([6, 2, 0, 1, 0x0F])
     + wd_run(4_000_000_000) + wd_run(4_000_000_000) + bytes([6, 0, 0, 1, 0]))


def main():
    for target, seeds in SEEDS.items():
        folder = os.path.join(ROOT, target)
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        for name, data in seeds.items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
    total = sum(len(d) for s in SEEDS.values() for d in s.values())
    print(f"{sum(len(s) for s in SEEDS.values())} seeds for {len(SEEDS)} targets, {total} bytes")


if __name__ == "__main__":
    main()
