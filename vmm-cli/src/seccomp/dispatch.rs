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
//! So the program is built in two parts. seccompiler compiles the calls
//! whose rules look at arguments; in front of its program goes a prefix
//! that, on x86_64, loads the call number and looks it up in a balanced
//! tree of the listed numbers: a call allowed whatever its arguments gets
//! the list's action at once, a call off the list the default action, and
//! the calls with argument rules (and any other architecture) go on into
//! seccompiler's program, which decides as it always has. Every call gets
//! the answer seccompiler's program for the whole list would give (the
//! tests check this call number by call number), in a dozen instructions
//! where it walked the list, when the kernel prepares its cache and at
//! every filtered call alike.
//!
//! `ioctl`'s rules were most of each program's length: one block of about
//! five instructions per request (30 requests, 157 of the vCPU program's
//! 252 instructions). When they are requests only (as the lists make them:
//! [`Rules::ioctl_requests`]), the prefix answers `ioctl` too, with a
//! second tree over the request numbers in argument 1, and seccompiler's
//! program keeps the other calls with argument rules.

use seccompiler::{sock_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use super::lists::Rules;

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

/// An instruction whose jumps are not known yet: where each goes.
#[derive(Clone, Copy)]
enum To {
    /// The next instruction.
    Next,
    /// seccompiler's program, after the prefix.
    Program,
    /// The instruction at this index of the prefix.
    At(usize),
    /// The search over `ioctl`'s requests, after the call numbers'.
    Requests,
}

struct Insn {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

impl Insn {
    fn load(offset: u32) -> Self {
        Self::jump(BPF_LD_W_ABS, offset, To::Next, To::Next)
    }

    fn ret(action: u32) -> Self {
        Self::jump(BPF_RET_K, action, To::Next, To::Next)
    }

    fn jump(code: u16, k: u32, jt: To, jf: To) -> Self {
        Self { code, k, jt, jf }
    }
}

/// Where a listed call number goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Listed {
    /// Allowed (or refused, for a list of refusals) whatever its arguments.
    Outright,
    /// Into seccompiler's program, for its argument rules.
    Rules,
    /// `ioctl`, whose requests the prefix searches.
    Requests,
}

/// The filter for `rules`: `matched` for a call a rule matches, `mismatch`
/// for the rest, as seccompiler's `SeccompFilter` with the same arguments
/// answers; a call whose rules are empty (allowed outright) and a call off
/// the list are answered by the prefix.
pub(super) fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    // A number that is no system call's (negative) leaves the whole list
    // to seccompiler.
    let requests = rules.ioctl_requests().filter(|r| !r.is_empty());
    // Each call and how the prefix answers it; `search`: `ioctl` by its
    // requests.
    let listed = |search: bool| -> Option<Vec<(u32, Listed)>> {
        rules
            .iter()
            .map(|(nr, chain)| {
                let kind = if chain.is_empty() {
                    Listed::Outright
                } else if search && *nr == libc::SYS_ioctl {
                    Listed::Requests
                } else {
                    Listed::Rules
                };
                Some((u32::try_from(*nr).ok()?, kind))
            })
            .collect()
    };
    let (mismatch_k, matched_k) = (u32::from(mismatch.clone()), u32::from(matched.clone()));
    // With the requests' tree if the jumps allow it, else without.
    let prefix = requests
        .as_deref()
        .and_then(|r| prefix(&listed(true)?, r, mismatch_k, matched_k))
        .map(|p| (p, true))
        .or_else(|| prefix(&listed(false)?, &[], mismatch_k, matched_k).map(|p| (p, false)));
    match prefix {
        Some((mut prefix, ioctl_searched)) => {
            let conditional: Rules = rules
                .into_calls()
                .into_iter()
                .filter(|(nr, c)| {
                    let searched = ioctl_searched && *nr == libc::SYS_ioctl;
                    !c.is_empty() && !searched
                })
                .collect();
            prefix.extend(plain(conditional, mismatch, matched)?);
            Ok(prefix)
        }
        None => plain(rules, mismatch, matched),
    }
}

/// seccompiler's own program for `rules`.
pub(super) fn plain(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    SeccompFilter::new(rules.into_calls(), mismatch, matched, TargetArch::x86_64)?.try_into()
}

/// `struct seccomp_data`'s offset of argument 1's low 32 bits (x86_64 is
/// little-endian): an `ioctl`'s request.
const ARG1_LOW_OFFSET: u32 = 16 + 8;

/// The prefix for `listed` (sorted by number, each once), and `ioctl`'s
/// `requests` when it is [`Listed::Requests`]: `mismatch` and `matched`
/// are the list's two actions. `None` if a jump would be too long.
fn prefix(
    listed: &[(u32, Listed)],
    requests: &[u32],
    mismatch: u32,
    matched: u32,
) -> Option<BpfProgram> {
    let mut insns = vec![
        Insn::load(ARCH_OFFSET),
        Insn::jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, To::Next, To::Program),
        Insn::load(NR_OFFSET),
    ];
    tree(listed, mismatch, matched, &mut insns);
    let requests_at = insns.len();
    if listed.iter().any(|&(_, k)| k == Listed::Requests) {
        let mut sorted: Vec<(u32, Listed)> =
            requests.iter().map(|&r| (r, Listed::Outright)).collect();
        sorted.sort_unstable_by_key(|&(r, _)| r);
        sorted.dedup_by_key(|&mut (r, _)| r);
        insns.push(Insn::load(ARG1_LOW_OFFSET));
        tree(&sorted, mismatch, matched, &mut insns);
    }
    resolve(&insns, requests_at)
}

/// Appends the search for the call number (in the accumulator) among
/// `listed`: each number where [`Listed`] says, any other `mismatch`.
fn tree(listed: &[(u32, Listed)], mismatch: u32, matched: u32, insns: &mut Vec<Insn>) {
    if listed.len() <= LEAF {
        // The comparisons, then `ret mismatch`, then (if a comparison
        // jumps there) `ret matched`.
        let ret_matched = insns.len() + listed.len() + 1;
        for &(n, kind) in listed {
            let found = match kind {
                Listed::Outright => To::At(ret_matched),
                Listed::Rules => To::Program,
                Listed::Requests => To::Requests,
            };
            insns.push(Insn::jump(BPF_JMP_JEQ_K, n, found, To::Next));
        }
        insns.push(Insn::ret(mismatch));
        if listed.iter().any(|&(_, kind)| kind == Listed::Outright) {
            insns.push(Insn::ret(matched));
        }
        return;
    }
    let (low, high) = listed.split_at(listed.len() / 2);
    // Above the low half's largest: the high half, placed after the low.
    let node = insns.len();
    let split = low.last().map_or(0, |&(n, _)| n);
    insns.push(Insn::jump(BPF_JMP_JGT_K, split, To::Next, To::Next));
    tree(low, mismatch, matched, insns);
    insns[node].jt = To::At(insns.len());
    tree(high, mismatch, matched, insns);
}

/// The prefix with its jumps as offsets (the requests' search at
/// `requests_at`), or `None` if one is too long
/// (classic BPF jumps go forward, at most 255 instructions: each jump into
/// the program must fit). A load or a return goes on to the next
/// instruction: offsets 0.
fn resolve(insns: &[Insn], requests_at: usize) -> Option<BpfProgram> {
    let end = insns.len();
    let offset = |from: usize, to: To| -> Option<u8> {
        let target = match to {
            To::Next => from + 1,
            To::Program => end,
            To::At(i) => i,
            To::Requests => requests_at,
        };
        u8::try_from(target.checked_sub(from + 1)?).ok()
    };
    insns
        .iter()
        .enumerate()
        .map(|(i, insn)| {
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

    /// Every list, both actions, and a list of refusals (its default is to
    /// allow): the program answers every call number (x86_64's, x32's,
    /// another architecture's) with any argument exactly as seccompiler's
    /// own for the whole list does, and a call off the list or allowed
    /// outright in a few instructions.
    #[test]
    fn the_prefix_changes_no_answer() {
        use seccompiler::SeccompAction::{Allow, Log, Trap};
        let mut cases = Vec::new();
        for (name, rules) in lists() {
            cases.push((name, rules.clone(), Trap, Allow));
            cases.push((name, rules, Log, Allow));
        }
        cases.push((
            "vcpu lock",
            super::super::lists::vcpu_lock().unwrap(),
            Allow,
            Trap,
        ));
        for (name, rules, mismatch, matched) in cases {
            let outright: Vec<i64> = rules
                .iter()
                .filter(|(_, chain)| chain.is_empty())
                .map(|(nr, _)| *nr)
                .collect();
            let seccompilers = plain(rules.clone(), mismatch.clone(), matched.clone()).unwrap();
            let ours = compile(rules.clone(), mismatch, matched).unwrap();
            let values = values(&seccompilers);
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
                        let (want, _) = run(&seccompilers, &data);
                        let (got, steps) = run(&ours, &data);
                        assert_eq!(got, want, "{name}: nr {nr:#x} arch {arch:#x}");
                        let listed = rules.get(&i64::from(nr));
                        let short = listed.is_none() || outright.contains(&i64::from(nr));
                        if arch == AUDIT_ARCH_X86_64 && short {
                            assert!(steps <= 3 + 8 + LEAF + 2, "{name}: {steps} steps");
                        }
                    }
                }
            }
        }
    }

    /// `ioctl`'s requests are searched in the prefix: each listed request
    /// is answered in a few instructions, the rest refused as fast, and
    /// seccompiler's part no longer holds a block per request.
    #[test]
    fn ioctl_requests_are_searched_not_walked() {
        use super::super::lists::{self, VCPU_IOCTLS};
        use seccompiler::SeccompAction::{Allow, Trap};
        let rules = lists::vcpu(1, 34).unwrap();
        let requests = rules.ioctl_requests().unwrap();
        assert!(VCPU_IOCTLS.iter().all(|&r| requests.contains(&(r as u32))));
        let seccompilers = plain(rules.clone(), Trap, Allow).unwrap();
        let ours = compile(rules, Trap, Allow).unwrap();
        // 252 instructions before the requests' tree, 154 with it.
        assert!(
            ours.len() + 80 < seccompilers.len(),
            "{} {}",
            ours.len(),
            seccompilers.len()
        );
        let ioctl = |request: u64| Data {
            nr: libc::SYS_ioctl as u32,
            arch: AUDIT_ARCH_X86_64,
            args: [3, request, 0, 0, 0, 0],
        };
        let bound = 3 + 8 + LEAF + 1 + 1 + 6 + LEAF + 2;
        for request in requests {
            let (answer, steps) = run(&ours, &ioctl(u64::from(request)));
            assert_eq!(answer, u32::from(Allow), "{request:#x}");
            assert!(steps <= bound, "{request:#x}: {steps} steps");
        }
        for request in [0, lists::SETUP_IOCTLS[0], 0xdead_beef] {
            let (answer, steps) = run(&ours, &ioctl(request));
            assert_eq!(answer, u32::from(Trap), "{request:#x}");
            assert!(steps <= bound, "{request:#x}: {steps} steps");
        }
        // Only the low 32 bits count, as in seccompiler's `Dword` rules.
        let high = VCPU_IOCTLS[0] | 0x7_0000_0000;
        assert_eq!(
            run(&ours, &ioctl(high)).0,
            run(&seccompilers, &ioctl(high)).0
        );
    }

    /// An `ioctl` rule made some other way than as a request leaves
    /// `ioctl` to seccompiler's part, with the same answers.
    #[test]
    fn other_ioctl_rules_leave_ioctl_to_seccompiler() {
        use seccompiler::SeccompAction::{Allow, Trap};
        use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
        let fd_rule = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 7)
            .and_then(|c| SeccompRule::new(vec![c]))
            .unwrap();
        // The vCPU list's calls with a rule of another kind for `ioctl`,
        // made outside the lists' functions.
        let rules: Rules = super::super::lists::vcpu(1, 34)
            .unwrap()
            .iter()
            .map(|(nr, chain)| {
                let mut chain = chain.clone();
                if *nr == libc::SYS_ioctl {
                    chain.push(fd_rule.clone());
                }
                (*nr, chain)
            })
            .collect();
        assert!(rules.ioctl_requests().is_none());
        let seccompilers = plain(rules.clone(), Trap, Allow).unwrap();
        let ours = compile(rules, Trap, Allow).unwrap();
        for (fd, request) in [(7, 0), (7, 0xdead), (3, 0xdead), (3, VCPU_KVM_RUN)] {
            let data = Data {
                nr: libc::SYS_ioctl as u32,
                arch: AUDIT_ARCH_X86_64,
                args: [fd, request, 0, 0, 0, 0],
            };
            assert_eq!(
                run(&ours, &data).0,
                run(&seccompilers, &data).0,
                "{fd} {request:#x}"
            );
        }
        assert_eq!(
            run(
                &ours,
                &Data {
                    nr: libc::SYS_ioctl as u32,
                    arch: AUDIT_ARCH_X86_64,
                    args: [7, 1, 0, 0, 0, 0]
                }
            )
            .0,
            u32::from(Allow)
        );
    }

    const VCPU_KVM_RUN: u64 = 0xae80;

    /// The calls allowed outright leave seccompiler's part, which is what
    /// makes the program shorter.
    #[test]
    fn calls_allowed_outright_leave_seccompilers_part() {
        use seccompiler::SeccompAction::{Allow, Trap};
        let rules = super::super::lists::gdb().unwrap();
        let seccompilers = plain(rules.clone(), Trap, Allow).unwrap();
        let ours = compile(rules, Trap, Allow).unwrap();
        assert!(
            ours.len() < seccompilers.len(),
            "{} {}",
            ours.len(),
            seccompilers.len()
        );
    }

    /// Too many numbers for short jumps, or a negative one: seccompiler's
    /// program alone, as it would be without the prefix.
    #[test]
    fn what_it_cannot_prefix_it_leaves_to_seccompiler() {
        use seccompiler::SeccompAction::{Allow, Trap};
        let many: Rules = (0..400).map(|nr| (nr, Vec::new())).collect();
        assert_eq!(
            compile(many.clone(), Trap, Allow).unwrap(),
            plain(many, Trap, Allow).unwrap()
        );
        let listed: Vec<(u32, Listed)> = (0..400).map(|n| (n, Listed::Outright)).collect();
        assert!(prefix(&listed, &[], 0, 1).is_none());
        let few: Rules = [(0, Vec::new()), (1, Vec::new())].into_iter().collect();
        assert!(compile(few.clone(), Trap, Allow).unwrap() != plain(few, Trap, Allow).unwrap());
    }
}
