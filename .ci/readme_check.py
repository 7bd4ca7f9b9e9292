#!/usr/bin/env python3
"""The README's interactive command as a new user meets it.

Runs `cargo xtask run` in a pseudo-terminal, as typed in a terminal, and
checks what a user would:

1. the default guest reaches a shell prompt, answers a command, and Ctrl-A x
   ends it with the VMM's status (0);
2. a VMM command line the VMM refuses (`-- --cpus 300`) makes
   `cargo xtask run` fail too;
3. `-- --qmp PATH` is reachable from this host by QEMU's Python client
   (nested on a PVM host, through the bridge out of L1), and `quit` ends the
   run with status 0.

Nested, the test bed (L1, a Linux under QEMU/TCG, with our VMM on its KVM)
now and then hangs (docs/nested/README.md). As in the nested tests, a run
lost to a fault of the test bed's that is named is tried once more,
loudly; a hang nothing names fails the check at once (it may be the
VMM's):

- L1 hangs in its own boot, before our VMM starts: no "test bed: L1 up
  after ..." line within L1_UP_LIMIT of xtask's notice (an L1 fault);
- L1 stops beating (its heartbeat on a serial port of its own, which the
  test bed watches): xtask ends L1 and says "L1 hung: no heartbeat ...";
- L1 came up but no prompt followed within PROMPT_AFTER_L1_LIMIT. L1
  watches a nested run and prints whose fault a hang is when it can tell:
  "test bed: TCG's SVM fault: ..." (an L2 vCPU stuck in L1's own VMRUN
  code) or its kernel's "BUG: soft lockup" (after which L1 panics and
  the run ends); a hang L1 did not name is reported as unnamed, and not
  retried.

The retry line carries QEMU's CPU seconds and the run's last output.

Usage: python3 .ci/readme_check.py [--clone]
  --clone  first `git clone` this checkout into a temporary folder and run
           there (a fresh clone: cold build, guest fetched anew). CI runs
           without it, in its own fresh clone, before anything else builds.
"""

import asyncio
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time

# A cold build (a minute or two on 2 cores) and the guest fetch come first.
FIRST_PROMPT_LIMIT = 900
PROMPT_LIMIT = 240
# From xtask's "running ... nested" notice to L1's "up" line: about 5-10 s
# on an idle host, a few times that on a busy one.
L1_UP_LIMIT = 150
# From L1's "up" line to the guest's prompt: 15-40 s on an idle host. L1
# samples a run still going at 60 s and 150 s for TCG's fault.
PROMPT_AFTER_L1_LIMIT = 300
# What names a hang as the test bed's own: L1's watcher's line, its
# kernel's soft-lockup report (L1 then panics and QEMU ends), or xtask's
# error when L1's heartbeat stopped (xtask then ends L1).
L1_NAMED_FAULTS = (b"test bed: TCG's SVM fault", b"BUG: soft lockup",
                   b"L1 hung: no heartbeat")
NESTED_NOTICE = b"running the same VMM and guest nested"
L1_UP = b"test bed: L1 up after"
L1_UP_END = b"starting the VMM"


class NestedHang(Exception):
    """A nested run that hung: L1 never came up or stopped beating (the
    test bed's fault), or the guest gave no prompt (named by L1 as the test
    bed's fault, or unnamed). Only a named one is tried again."""

    def __init__(self, text, named):
        super().__init__(text)
        self.named = named


class Pty:
    """A command in a pseudo-terminal, its output kept."""

    def __init__(self, argv, cwd):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(cwd)
            os.execvp(argv[0], argv)
        self.out = b""

    def read_until(self, needle, limit):
        return self.read_until_any([needle], limit)

    def read_until_any(self, needles, limit):
        end = time.monotonic() + limit
        while not any(n in self.out for n in needles):
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {needles!r} within {limit} s; last output:\n"
                                   + self.tail())
            r, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if r:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise EOFError(f"ended before {needles!r}; last output:\n" + self.tail())
                self.out += chunk
        return self.out

    def send(self, data):
        os.write(self.fd, data)

    def wait(self, limit):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            # Keep draining, so that the child never blocks on a full pty.
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if r:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        self.kill()
        raise TimeoutError(f"did not end within {limit} s; last output:\n" + self.tail())

    def tail(self):
        return self.out[-3000:].decode(errors="replace")

    def session(self):
        """(pid, name, CPU seconds) of every process in the command's
        session (pty.fork made it a session leader)."""
        tick = os.sysconf("SC_CLK_TCK")
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.find("(") + 1:stat.rfind(")")]
            fields = stat[stat.rfind(")") + 2:].split()
            # fields[3] is the session id, fields[11] and [12] utime, stime.
            if int(fields[3]) == self.pid:
                found.append((int(entry), name, (int(fields[11]) + int(fields[12])) / tick))
        return found

    def kill(self):
        """Ends the command and everything it started (its whole session:
        cargo, xtask and QEMU may sit in process groups of their own)."""
        for pid, _, _ in self.session():
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except OSError:
            pass

    def qemu_cpu_seconds(self):
        """CPU seconds used by the QEMU processes this command started."""
        return [cpu for _, name, cpu in self.session() if name.startswith("qemu-system")]


def l1_not_up(p):
    """The NestedHang of a run whose L1 did not come up in time."""
    return NestedHang(f"L1 FAULT (the test bed's, not the VMM's): L1 did not come up within "
                      f"{L1_UP_LIMIT} s of the nested notice (QEMU's CPU seconds: "
                      f"{p.qemu_cpu_seconds()}); last output:\n{p.tail()}", named=True)


def l1_named_fault(out):
    """What in out names a fault of the test bed's, or None."""
    named = [f.decode() for f in L1_NAMED_FAULTS if f in out]
    return named[0] if named else None


def once_more_after_a_hang(run):
    """run(), tried once more after a nested hang the test bed's fault
    named, loudly; an unnamed one fails."""
    try:
        return run()
    except NestedHang as hang:
        if not hang.named:
            step(f"NOT RETRIED: {hang}")
            raise
        step(f"RETRYING ONCE after a {hang}")
        return run()


def to_prompt(argv, repo, limit):
    """Runs argv in a pty until the guest's shell prompt, within limit
    seconds (or, nested, until xtask's notice); nested, L1's "up" line must
    come within L1_UP_LIMIT of that notice and the prompt within
    PROMPT_AFTER_L1_LIMIT of L1's line, or the run is a NestedHang (killed).
    Returns the Pty."""
    p = Pty(argv, repo)
    try:
        p.read_until_any([b"/ # ", NESTED_NOTICE], limit)
        if b"/ # " not in p.out:
            try:
                p.read_until(L1_UP_END, L1_UP_LIMIT)
            except TimeoutError:
                raise l1_not_up(p) from None
            up = p.out[p.out.find(L1_UP):p.out.find(L1_UP_END)].decode(errors="replace")
            up = up.rstrip("; ")
            step(f"  {up}")
            try:
                p.read_until(b"/ # ", PROMPT_AFTER_L1_LIMIT)
            except (TimeoutError, EOFError) as e:
                ended = ("the run ended before the prompt" if isinstance(e, EOFError) else
                         f"no prompt within {PROMPT_AFTER_L1_LIMIT} s of L1's up line")
                named = l1_named_fault(p.out)
                whose = (f"NAMED: {named} (the test bed's fault, not the VMM's)"
                         if named else "UNNAMED (L1 named no fault of its own: may be the VMM's)")
                raise NestedHang(f"NESTED HANG, {whose}: {ended} (QEMU's CPU seconds: "
                                 f"{p.qemu_cpu_seconds()}); last output:\n{p.tail()}",
                                 named=named is not None) from None
    except BaseException:
        p.kill()
        raise
    return p


def to_prompt_retrying(make_argv, repo, limit):
    """to_prompt with make_argv(), tried once more (with a fresh
    make_argv()) after a nested hang, loudly."""
    return once_more_after_a_hang(lambda: to_prompt(make_argv(), repo, limit))


def step(text):
    print(f"readme check: {text}", flush=True)


def shell_round_trip(repo):
    step("cargo xtask run: shell, a command, Ctrl-A x")
    start = time.monotonic()
    p = to_prompt_retrying(lambda: ["cargo", "xtask", "run"], repo, FIRST_PROMPT_LIMIT)
    step(f"  prompt after {time.monotonic() - start:.1f} s")
    try:
        p.send(b"echo readme-$((6*7))\r")
        p.read_until(b"readme-42", 60)
        p.send(b"\x01x")
        status = p.wait(60)
    except BaseException:
        p.kill()
        raise
    assert status == 0, f"cargo xtask run ended with {status} after Ctrl-A x:\n{p.tail()}"
    step("  ok (status 0)")


def refused_run(repo):
    """`cargo xtask run -- --cpus 300` in a pty, to its end: (status,
    output). Nested, L1's "up" line must come within L1_UP_LIMIT of xtask's
    notice, or the run is a NestedHang (L1's fault; killed)."""
    p = Pty(["cargo", "xtask", "run", "--", "--cpus", "300"], repo)
    try:
        try:
            p.read_until(NESTED_NOTICE, PROMPT_LIMIT)
            p.read_until(L1_UP_END, L1_UP_LIMIT)
        except EOFError:
            pass  # it ended first (directly on KVM, or an error of xtask's)
        except TimeoutError:
            if NESTED_NOTICE in p.out and L1_UP not in p.out:
                raise l1_not_up(p) from None
            raise
        status = p.wait(PROMPT_AFTER_L1_LIMIT)
    except BaseException:
        p.kill()
        raise
    named = l1_named_fault(p.out)
    if named:
        raise NestedHang(f"NESTED HANG, NAMED: {named} (the test bed's fault, not the VMM's); "
                         f"last output:\n{p.tail()}", named=True)
    return status, p.out.decode(errors="replace")


def failing_vmm_fails(repo):
    step("cargo xtask run -- --cpus 300: fails as the VMM does")
    status, out = once_more_after_a_hang(lambda: refused_run(repo))
    assert status != 0, f"status 0 for a refused command line:\n{out[-3000:]}"
    assert "vCPUs" in out, f"the VMM's reason is missing:\n{out[-3000:]}"
    step(f"  ok (status {status})")


def qmp_from_the_host(repo):
    from qemu.qmp import QMPClient

    step("cargo xtask run -- --qmp PATH: QEMU's Python client from this host")
    socks = []

    def argv():
        # A fresh path per try: a killed try leaves its socket behind.
        socks.append(os.path.join(tempfile.mkdtemp(prefix="readme-check-"), "vmm.qmp"))
        return ["cargo", "xtask", "run", "--", "--qmp", socks[-1]]

    p = to_prompt_retrying(argv, repo, PROMPT_LIMIT)
    sock = socks[-1]

    async def drive():
        q = QMPClient("readme-check")
        await q.connect(sock)
        status = await q.execute("query-status")
        assert status["status"] == "running", status
        try:
            await q.execute("quit")
        except Exception:  # the VMM closes the socket as it quits
            pass
        try:
            await q.disconnect()
        except Exception:
            pass

    try:
        asyncio.run(asyncio.wait_for(drive(), 60))
        status = p.wait(60)
    except BaseException:
        p.kill()
        raise
    assert status == 0, f"cargo xtask run ended with {status} after QMP quit:\n{p.tail()}"
    assert not os.path.exists(sock), "the QMP socket was left behind"
    step("  ok (query-status running, quit, status 0, socket removed)")


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clone = None
    if "--clone" in sys.argv[1:]:
        clone = tempfile.mkdtemp(prefix="vmm-fresh-clone-")
        subprocess.run(["git", "clone", "-q", repo, clone], check=True)
        repo = clone
        step(f"fresh clone in {repo}")
    try:
        shell_round_trip(repo)
        failing_vmm_fails(repo)
        qmp_from_the_host(repo)
    finally:
        if clone:
            shutil.rmtree(clone, ignore_errors=True)
    print("readme_check: 3 passed, 0 failed")


if __name__ == "__main__":
    main()
