//! A binary-search prefix for seccompiler's programs, which makes a filter
//! cheap to install.
//!
//! seccompiler compiles a list into one block per system call, tried one
//! after another. When a filter goes in, the kernel works out which calls
//! the filter allows whatever their arguments (its action cache, kernel
//! 5.11 and later): it runs the program once per system call number,
//! about 460 of them, and each call off the list walks every block before
//! it reaches the default action. Measured here, that walk is three
//! quarters of `seccomp()`'s cost: the main list's 250 instructions took
//! 248 µs to install, and 67 µs with the walk cut short.
//!
//! The prefix comes before the program, which stays as seccompiler made
//! it: on x86_64 it loads the call number and looks it up in a balanced
//! tree of the listed numbers; a number off the list gets the program's
//! default action at once, a listed one (and any other architecture) goes
//! on into the program, which decides as before. So the program answers
//! every call as before, an unlisted one in a few instructions instead of
//! a walk over the whole list, when the kernel prepares its cache and at
//! every filtered call alike.

use seccompiler::{sock_filter, BpfProgram};

// Classic BPF opcodes (linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_RET_K: u16 = 0x06;

/// `struct seccomp_data`'s offsets: the call number, the architecture.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

/// `AUDIT_ARCH_X86_64`, the only architecture the lists are for.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// At most this many numbers are compared one after another in a leaf of
/// the tree.
const LEAF: usize = 4;

/// Classic BPF jumps are forward and at most 255 instructions long: the
/// prefix must be short enough for each of its jumps into the program.
const MAX_JUMP: usize = 255;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// An instruction whose jumps are not known yet: where each goes.
#[derive(Clone, Copy)]
enum To {
    /// The next instruction.
    Next,
    /// The program after the prefix.
    Program,
    /// The instruction at this index of the prefix.
    At(usize),
}

struct Insn {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

/// `program` (seccompiler's, for `listed`: the list's call numbers, each
/// once) behind the prefix; `program` unchanged if it does not look like
/// seccompiler's output for x86_64 or the prefix would not fit.
pub(super) fn with_prefix(program: BpfProgram, listed: &[i64]) -> BpfProgram {
    let Some(default) = default_action(&program) else {
        return program;
    };
    let mut numbers: Vec<u32> = Vec::with_capacity(listed.len());
    for &nr in listed {
        match u32::try_from(nr) {
            Ok(n) => numbers.push(n),
            Err(_) => return program,
        }
    }
    numbers.sort_unstable();
    numbers.dedup();

    let mut insns = vec![
        Insn {
            code: BPF_LD_W_ABS,
            k: ARCH_OFFSET,
            jt: To::Next,
            jf: To::Next,
        },
        Insn {
            code: BPF_JMP_JEQ_K,
            k: AUDIT_ARCH_X86_64,
            jt: To::Next,
            jf: To::Program,
        },
        Insn {
            code: BPF_LD_W_ABS,
            k: NR_OFFSET,
            jt: To::Next,
            jf: To::Next,
        },
    ];
    tree(&numbers, default, &mut insns);
    match resolve(&insns) {
        Some(mut prefix) => {
            prefix.extend(program);
            prefix
        }
        None => program,
    }
}

/// The action of a call off the list: seccompiler ends its program with it
/// (after an architecture check first, the shape this relies on).
fn default_action(program: &[sock_filter]) -> Option<u32> {
    let arch_check = program.first()?.code == BPF_LD_W_ABS
        && program.first()?.k == ARCH_OFFSET
        && program.get(1)?.code == BPF_JMP_JEQ_K
        && program.get(1)?.k == AUDIT_ARCH_X86_64;
    let last = program.last()?;
    (arch_check && last.code == BPF_RET_K).then_some(last.k)
}

/// Appends the search for the call number (in the accumulator) among
/// `numbers` (sorted): found, on into the program; not found, `default`.
fn tree(numbers: &[u32], default: u32, insns: &mut Vec<Insn>) {
    if numbers.len() <= LEAF {
        for &n in numbers {
            insns.push(Insn {
                code: BPF_JMP_JEQ_K,
                k: n,
                jt: To::Program,
                jf: To::Next,
            });
        }
        insns.push(Insn {
            code: BPF_RET_K,
            k: default,
            jt: To::Next,
            jf: To::Next,
        });
        return;
    }
    let (low, high) = numbers.split_at(numbers.len() / 2);
    // Above the low half's largest: the high half, placed after the low.
    let node = insns.len();
    let split = *low.last().unwrap_or(&0);
    insns.push(Insn {
        code: BPF_JMP_JGT_K,
        k: split,
        jt: To::Next, // patched below
        jf: To::Next,
    });
    tree(low, default, insns);
    insns[node].jt = To::At(insns.len());
    tree(high, default, insns);
}

/// The prefix with its jumps as offsets, or `None` if one is too long.
fn resolve(insns: &[Insn]) -> Option<BpfProgram> {
    let end = insns.len();
    let offset = |from: usize, to: To| -> Option<u8> {
        let target = match to {
            To::Next => from + 1,
            To::Program => end,
            To::At(i) => i,
        };
        let distance = target.checked_sub(from + 1)?;
        if distance > MAX_JUMP {
            return None;
        }
        u8::try_from(distance).ok()
    };
    insns
        .iter()
        .enumerate()
        .map(|(i, insn)| {
            let is_jump = insn.code == BPF_JMP_JEQ_K || insn.code == BPF_JMP_JGT_K;
            if !is_jump {
                return Some(stmt(insn.code, insn.k));
            }
            Some(sock_filter {
                code: insn.code,
                jt: offset(i, insn.jt)?,
                jf: offset(i, insn.jf)?,
                k: insn.k,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `struct seccomp_data` as a filter sees it.
    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Data {
        fn word(&self, offset: u32) -> u32 {
            match offset {
                0 => self.nr,
                4 => self.arch,
                // instruction_pointer: not used by our lists.
                8 | 12 => 0,
                o if (16..64).contains(&o) && o % 4 == 0 => {
                    let arg = self.args[(o as usize - 16) / 8];
                    if o % 8 == 0 {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                o => panic!("load at {o}"),
            }
        }
    }

    /// A classic BPF interpreter for what seccompiler and the prefix emit;
    /// also returns how many instructions ran.
    fn run(program: &[sock_filter], data: &Data) -> (u32, usize) {
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = &program[pc];
            steps += 1;
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                0x20 => a = data.word(i.k),
                0x54 => a &= i.k,
                0x05 => pc += i.k as usize,
                0x15 => pc += jump(a == i.k),
                0x25 => pc += jump(a > i.k),
                0x35 => pc += jump(a >= i.k),
                0x45 => pc += jump(a & i.k != 0),
                0x06 => return (i.k, steps),
                c => panic!("opcode {c:#x} at {}", pc - 1),
            }
        }
    }

    fn lists() -> Vec<(&'static str, super::super::lists::Rules)> {
        use super::super::lists;
        vec![
            ("main", lists::main(1, 34).unwrap()),
            ("vcpu", lists::vcpu(1, 34).unwrap()),
            ("vcpu spawner", lists::vcpu_spawner(1, 34).unwrap()),
            ("serial", lists::serial().unwrap()),
            ("device", lists::device().unwrap()),
            ("vsock", lists::vsock().unwrap()),
            ("gdb", lists::gdb().unwrap()),
            ("migration", lists::migration().unwrap()),
        ]
    }

    /// Argument values worth trying: every value a rule of the list names,
    /// and a few others.
    fn values(program: &[sock_filter]) -> Vec<u64> {
        let mut v: Vec<u64> = program.iter().map(|i| u64::from(i.k)).collect();
        v.extend([0, 1, u64::MAX, 0xdead_beef_0000_0001]);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Every list, both actions: the prefixed program answers every call
    /// number (x86_64, x32's, another architecture's) with any argument
    /// exactly as seccompiler's own does, and a call off the list in a few
    /// instructions.
    #[test]
    fn the_prefix_changes_no_answer() {
        let actions = [
            seccompiler::SeccompAction::Trap,
            seccompiler::SeccompAction::Log,
        ];
        for (name, rules) in lists() {
            for action in &actions {
                let listed: Vec<i64> = rules.keys().copied().collect();
                let plain = super::super::seccompiler_program(
                    rules.clone(),
                    action.clone(),
                    seccompiler::SeccompAction::Allow,
                )
                .unwrap();
                let prefixed = with_prefix(plain.clone(), &listed);
                assert!(prefixed.len() > plain.len(), "{name}: no prefix");
                let values = values(&plain);
                let mut seed = 0x9e37_79b9_7f4a_7c15u64;
                for arch in [AUDIT_ARCH_X86_64, 0x4000_0003] {
                    for nr in (0..600).chain((0..600).map(|n| n | 0x4000_0000)) {
                        for round in 0..24 {
                            let mut args = [0u64; 6];
                            for a in &mut args {
                                seed ^= seed << 13;
                                seed ^= seed >> 7;
                                seed ^= seed << 17;
                                *a = if round == 0 {
                                    0
                                } else {
                                    values[(seed % values.len() as u64) as usize]
                                };
                            }
                            let data = Data { nr, arch, args };
                            let (want, _) = run(&plain, &data);
                            let (got, steps) = run(&prefixed, &data);
                            assert_eq!(got, want, "{name}: nr {nr:#x} arch {arch:#x}");
                            if arch == AUDIT_ARCH_X86_64 && !listed.contains(&i64::from(nr)) {
                                assert!(steps <= 3 + 8 + LEAF + 1, "{name}: {steps} steps");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The lock (refusals: its default is to allow) gets the prefix too.
    #[test]
    fn a_list_of_refusals_keeps_its_default() {
        let rules = super::super::lists::vcpu_lock().unwrap();
        let listed: Vec<i64> = rules.keys().copied().collect();
        let plain = super::super::seccompiler_program(
            rules,
            seccompiler::SeccompAction::Allow,
            seccompiler::SeccompAction::Trap,
        )
        .unwrap();
        let prefixed = with_prefix(plain.clone(), &listed);
        assert!(prefixed.len() > plain.len());
        for nr in 0..600 {
            let data = Data {
                nr,
                arch: AUDIT_ARCH_X86_64,
                args: [0; 6],
            };
            assert_eq!(run(&prefixed, &data).0, run(&plain, &data).0, "{nr}");
        }
    }

    /// Not seccompiler's shape, or too many numbers for short jumps: the
    /// program as it came.
    #[test]
    fn what_it_cannot_prefix_it_leaves_alone() {
        let ret = |k| stmt(BPF_RET_K, k);
        let odd = vec![stmt(BPF_LD_W_ABS, NR_OFFSET), ret(0)];
        assert_eq!(with_prefix(odd.clone(), &[1, 2]), odd);
        assert!(with_prefix(Vec::new(), &[1]).is_empty());
        let shaped = vec![
            stmt(BPF_LD_W_ABS, ARCH_OFFSET),
            sock_filter {
                code: BPF_JMP_JEQ_K,
                jt: 1,
                jf: 0,
                k: AUDIT_ARCH_X86_64,
            },
            ret(0),
            ret(0x7fff_0000),
        ];
        let many: Vec<i64> = (0..400).collect();
        assert_eq!(with_prefix(shaped.clone(), &many), shaped);
        assert_eq!(with_prefix(shaped.clone(), &[-1]), shaped);
        assert!(with_prefix(shaped.clone(), &[0, 1]).len() > shaped.len());
    }
}
