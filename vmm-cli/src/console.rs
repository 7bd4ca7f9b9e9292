//! The interactive console: keystrokes from stdin into COM1's receive FIFO,
//! with QEMU's Ctrl-A escapes, and flow control when the FIFO is full.
//!
//! What the receive FIFO cannot take yet waits here, and COM1's "FIFO
//! empty" eventfd hands on the rest as the guest reads. stdin is always
//! read, so that Ctrl-A x works even when the guest reads nothing (a hung
//! guest, early boot); only the waiting input is bounded, at
//! [`PENDING_LIMIT`] bytes: beyond that, input is dropped, with a warning.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_pc::devices::Com1;
use vmm_pc::MachineControl;
use vmm_sys_util::eventfd::EventFd;

use crate::escape::{Action, EscapeParser, HELP};
use crate::monitor::{self, Editor, Line};
use crate::output::SerialSink;

/// Most typed input that may wait for the guest to read it.
pub const PENDING_LIMIT: usize = 64 * 1024;

/// The console subscriber.
pub struct Console {
    /// Where the monitor's text goes: the serial output's writer.
    out: SerialSink,
    stdin: io::Stdin,
    ready: EventFd,
    com1: Arc<Mutex<Com1>>,
    control: MachineControl,
    parser: EscapeParser,
    /// Input the FIFO did not take yet.
    pending: Vec<u8>,
    stdin_watched: bool,
    /// stdin cannot be polled (a regular file, /dev/null): never retry.
    stdin_unpollable: bool,
    /// The monitor has the keyboard (Ctrl-A c), with its line editor.
    monitor: Option<Editor>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console feeding `com1`; `ready` is COM1's FIFO-drained eventfd.
    pub fn new(
        com1: Arc<Mutex<Com1>>,
        ready: EventFd,
        control: MachineControl,
        out: SerialSink,
    ) -> Self {
        Self {
            out,
            stdin: io::stdin(),
            ready,
            com1,
            control,
            parser: EscapeParser::new(),
            pending: Vec::new(),
            stdin_watched: false,
            stdin_unpollable: false,
            monitor: None,
        }
    }

    /// Gives the guest as much pending input as its FIFO takes.
    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let taken = self
            .com1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(&self.pending);
        self.pending.drain(..taken.min(self.pending.len()));
    }

    fn set_stdin_watched(&mut self, ops: &mut EventOps, watched: bool) {
        if watched == self.stdin_watched || (watched && self.stdin_unpollable) {
            return;
        }
        let fd = self.stdin.as_raw_fd();
        let result = if watched {
            ops.add(Events::new_raw(fd, EventSet::IN))
        } else {
            ops.remove(Events::empty_raw(fd))
        };
        match result {
            Ok(()) => self.stdin_watched = watched,
            // A regular file or /dev/null as stdin cannot be polled: then
            // there is simply no console input.
            Err(e) => {
                self.stdin_unpollable = true;
                log::info!("console: stdin cannot be watched ({e}): no console input");
            }
        }
    }

    fn on_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = match self.stdin.lock().read(&mut buf) {
            Ok(0) => {
                // End of input: the guest keeps running without a keyboard.
                self.set_stdin_watched(ops, false);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(e) => {
                log::error!("console: cannot read stdin: {e}");
                self.set_stdin_watched(ops, false);
                return;
            }
        };
        for action in self.parser.feed(&buf[..n]) {
            match action {
                Action::Guest(bytes) if self.monitor.is_some() => self.monitor_input(&bytes),
                Action::Monitor => {
                    if self.monitor.take().is_some() {
                        self.print("\r\n");
                    } else {
                        self.monitor = Some(Editor::default());
                        self.print(&format!(
                            "\r\nvmm monitor (help for commands, C-a c back to the guest)\r\n{}",
                            monitor::PROMPT
                        ));
                    }
                }
                Action::Guest(bytes) => {
                    let room = PENDING_LIMIT.saturating_sub(self.pending.len());
                    if bytes.len() > room {
                        log::warn!(
                            "console: the guest is not reading its serial input; {} bytes dropped",
                            bytes.len() - room
                        );
                    }
                    self.pending
                        .extend_from_slice(&bytes[..bytes.len().min(room)]);
                }
                Action::Help => self.print(HELP),
                Action::Quit => self.control.request_quit(),
            }
        }
        self.flush_pending();
    }
}

impl Console {
    /// Typed bytes while the monitor has the keyboard.
    fn monitor_input(&mut self, bytes: &[u8]) {
        let Some(editor) = self.monitor.as_mut() else {
            return;
        };
        let (echo, lines) = editor.feed(bytes);
        self.print(&String::from_utf8_lossy(&echo));
        for line in lines {
            let line = monitor::parse(&line);
            match (monitor::local_text(&line), line) {
                (Some(text), _) => self.print(&format!("{text}{}", monitor::PROMPT)),
                // The same machine commands as QMP's; the main loop runs
                // them and the answer is printed when it comes.
                (None, Line::Machine(command)) => {
                    let mut out = self.out.clone();
                    self.control.submit(
                        command,
                        Box::new(move |outcome| {
                            print_to(
                                &mut out,
                                &format!("{}{}", monitor::reply_text(outcome), monitor::PROMPT),
                            );
                        }),
                    );
                }
                (None, _) => {}
            }
        }
    }
}

impl Console {
    /// Writes monitor text to the terminal, beside the guest's output.
    fn print(&mut self, text: &str) {
        print_to(&mut self.out, text);
    }
}

/// Writes monitor text through `out`: in order with the guest's output,
/// never blocking the main loop for long on a terminal or pipe whose
/// reader has stopped (what waits goes to the output's buffer).
fn print_to(out: &mut SerialSink, text: &str) {
    let _ = out.write_all(text.as_bytes());
}

impl MutEventSubscriber for Console {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.ready.as_raw_fd() {
            let _ = self.ready.read();
            self.flush_pending();
        } else if events
            .event_set()
            .intersects(EventSet::ERROR | EventSet::HANG_UP)
            && !events.event_set().contains(EventSet::IN)
        {
            self.set_stdin_watched(ops, false);
        } else {
            self.on_stdin(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.ready, EventSet::IN)) {
            log::error!("console: cannot watch COM1 readiness: {e}");
        }
        self.set_stdin_watched(ops, true);
    }
}
