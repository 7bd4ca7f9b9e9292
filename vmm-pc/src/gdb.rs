//! The machine as the gdb stub sees it ([`vmm_gdb::DebugMachine`]): each
//! call becomes a [`Command::Gdb`] for the main loop, which carries it out
//! between two waits as it does a QMP command (`machine/gdb.rs`), and the
//! stub's thread waits for the reply.

use std::sync::mpsc;
use std::time::Duration;

use vmm_gdb::{DebugMachine, MachineError, Registers, ResumePlan};

use crate::control::{Command, GdbRequest, Reply};
use crate::MachineControl;

/// How long the stub waits for the main loop: more than a vCPU may take to
/// answer (10 s), so a stuck vCPU is the machine's error, not a timeout.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The most guest memory one request reads or writes (gdb asks for a few
/// hundred bytes at a time; gdbstub's packet buffer bounds it anyway).
const MAX_ACCESS: usize = 64 * 1024;

/// The stub's handle on the machine.
#[derive(Debug, Clone)]
pub struct GdbLink {
    control: MachineControl,
    vcpus: u32,
}

impl GdbLink {
    /// A link to the machine behind `control`, which has `vcpus` vCPUs.
    pub fn new(control: MachineControl, vcpus: u32) -> Self {
        Self { control, vcpus }
    }

    fn ask(&self, command: Command) -> Result<Reply, MachineError> {
        let (tx, rx) = mpsc::channel();
        let claim = self.control.submit_withdrawable(
            command,
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
        );
        let outcome = match rx.recv_timeout(REPLY_TIMEOUT) {
            Err(mpsc::RecvTimeoutError::Timeout) if claim.withdraw() => {
                // Never to run: what the stub knows of the guest (its
                // breakpoints, whether it is attached) stays true.
                return Err(MachineError::Refused(
                    "the machine did not answer in time".into(),
                ));
            }
            // Running now (the main loop took it): its reply comes.
            Err(mpsc::RecvTimeoutError::Timeout) => rx.recv().map_err(|_| MachineError::Gone)?,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(MachineError::Gone),
            Ok(outcome) => outcome,
        };
        outcome.map_err(MachineError::Refused)
    }

    fn done(&self, request: GdbRequest) -> Result<(), MachineError> {
        self.ask(Command::Gdb(request)).map(|_| ())
    }
}

fn unexpected(reply: &Reply) -> MachineError {
    MachineError::Refused(format!("unexpected reply {reply:?}"))
}

impl DebugMachine for GdbLink {
    fn vcpu_count(&self) -> u32 {
        self.vcpus
    }

    fn attach(&mut self) -> Result<(), MachineError> {
        self.done(GdbRequest::Attach)
    }

    fn interrupt(&mut self) -> Result<(), MachineError> {
        self.done(GdbRequest::Interrupt)
    }

    fn read_registers(&mut self, vcpu: u32) -> Result<Registers, MachineError> {
        match self.ask(Command::Gdb(GdbRequest::ReadRegisters { vcpu }))? {
            Reply::GdbRegisters(r) => Ok(*r),
            other => Err(unexpected(&other)),
        }
    }

    fn write_registers(&mut self, vcpu: u32, regs: &Registers) -> Result<(), MachineError> {
        self.done(GdbRequest::WriteRegisters {
            vcpu,
            regs: Box::new(*regs),
        })
    }

    fn read_memory(&mut self, vcpu: u32, addr: u64, buf: &mut [u8]) -> Result<usize, MachineError> {
        let len = buf.len().min(MAX_ACCESS);
        match self.ask(Command::Gdb(GdbRequest::ReadMemory { vcpu, addr, len }))? {
            Reply::GdbMemory(bytes) if bytes.is_empty() && len > 0 => {
                Err(MachineError::Unmapped(format!("{addr:#x} is not mapped")))
            }
            Reply::GdbMemory(bytes) => {
                let n = bytes.len().min(len);
                buf[..n].copy_from_slice(&bytes[..n]);
                Ok(n)
            }
            other => Err(unexpected(&other)),
        }
    }

    fn write_memory(&mut self, vcpu: u32, addr: u64, data: &[u8]) -> Result<(), MachineError> {
        if data.len() > MAX_ACCESS {
            return Err(MachineError::Refused("write too long".into()));
        }
        let request = GdbRequest::WriteMemory {
            vcpu,
            addr,
            data: data.to_vec(),
        };
        match self.ask(Command::Gdb(request))? {
            Reply::GdbWritten(n) if n == data.len() => Ok(()),
            Reply::GdbWritten(n) => Err(MachineError::Unmapped(format!(
                "{:#x} is not mapped",
                addr.wrapping_add(n as u64)
            ))),
            other => Err(unexpected(&other)),
        }
    }

    fn resume(&mut self, plan: &ResumePlan) -> Result<(), MachineError> {
        self.done(GdbRequest::Resume(plan.clone()))
    }

    fn detach(&mut self) -> Result<(), MachineError> {
        self.done(GdbRequest::Detach)
    }

    fn kill(&mut self) -> Result<(), MachineError> {
        self.ask(Command::Quit).map(|_| ())
    }
}
