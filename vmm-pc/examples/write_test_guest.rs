//! Writes one of the hand-assembled test guests to a file:
//! `cargo run -p vmm-pc --example write_test_guest -- hello|hello-exit|halt|spin|echo|poweroff|two-cpus|read-port|suspend-cycles|pio-loop[:COUNT]|timer-loop[:COUNT]|watchdog:INDEX|counter[:DELAY]|filled-counter:MIB|dirtying-counter:MIB PATH`.

use vmm_pc::test_guests;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(kind), Some(path)) = (args.first(), args.get(1)) else {
        eprintln!(
            "usage: write_test_guest hello|hello-exit|halt|spin|echo|poweroff|two-cpus|read-port|suspend-cycles|pio-loop[:COUNT]|timer-loop[:COUNT]|watchdog:INDEX|counter[:DELAY]|filled-counter:MIB|dirtying-counter:MIB PATH"
        );
        std::process::exit(2);
    };
    let image = match kind.as_str() {
        "hello" => test_guests::hello_reset("Hello from a PVH guest\n"),
        "spin" => test_guests::hello_spin("spinning\n"),
        "echo" => test_guests::echo(),
        "hello-exit" => test_guests::hello_exit("Hello from a PVH guest\n"),
        "poweroff" => test_guests::hello_poweroff("powering off\n"),
        "two-cpus" => test_guests::two_cpus(),
        "read-port" => test_guests::read_port(0x99),
        "halt" => test_guests::hello_halt("Hello from a PVH guest\n"),
        "suspend-cycles" => test_guests::suspend_cycles(),
        c if c.starts_with("dirtying-counter:") => {
            test_guests::dirtying_counter(1000, mib(c, "dirtying-counter"))
        }
        c if c.starts_with("filled-counter:") => {
            test_guests::filled_counter(1000, mib(c, "filled-counter"))
        }
        c if c.starts_with("counter") => match c.strip_prefix("counter").unwrap_or("") {
            "" => test_guests::counter(100_000),
            n => match n.strip_prefix(':').and_then(|n| n.parse().ok()) {
                Some(delay) => test_guests::counter(delay),
                None => {
                    eprintln!("counter:DELAY needs a number of loop turns");
                    std::process::exit(2);
                }
            },
        },
        pio if pio.starts_with("pio-loop") => test_guests::pio_loop(count(pio, "pio-loop")),
        timer if timer.starts_with("timer-loop") => {
            test_guests::timer_loop(count(timer, "timer-loop"))
        }
        wd if wd.starts_with("watchdog:") => {
            match wd.strip_prefix("watchdog:").and_then(|n| n.parse().ok()) {
                Some(index) => test_guests::watchdog("Hello from a PVH guest\n", index),
                None => {
                    eprintln!("watchdog:INDEX needs an ib700 timeout index 0-15");
                    std::process::exit(2);
                }
            }
        }
        other => {
            eprintln!("unknown guest {other}");
            std::process::exit(2);
        }
    };
    if let Err(e) = std::fs::write(path, image) {
        eprintln!("cannot write {path}: {e}");
        std::process::exit(1);
    }
}

/// The COUNT of `NAME[:COUNT]` (100000 if absent); exits on a bad one.
fn count(kind: &str, name: &str) -> u32 {
    match kind.strip_prefix(name).unwrap_or("") {
        "" => 100_000,
        n => match n.strip_prefix(':').and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => {
                eprintln!("{name}:COUNT needs a number, not {n}");
                std::process::exit(2);
            }
        },
    }
}

/// The number of MiB in `kind`, `name:MIB`.
fn mib(kind: &str, name: &str) -> u32 {
    let n = kind.strip_prefix(name).and_then(|n| n.strip_prefix(':'));
    match n.and_then(|n| n.parse().ok()) {
        Some(n) => n,
        None => {
            eprintln!("{name}:MIB needs a number of MiB");
            std::process::exit(2);
        }
    }
}
