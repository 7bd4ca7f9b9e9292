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


class Pty:
    """A command in a pseudo-terminal, its output kept."""

    def __init__(self, argv, cwd):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(cwd)
            os.execvp(argv[0], argv)
        self.out = b""

    def read_until(self, needle, limit):
        end = time.monotonic() + limit
        while needle not in self.out:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {needle!r} within {limit} s; last output:\n"
                                   + self.tail())
            r, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if r:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise EOFError(f"ended before {needle!r}; last output:\n" + self.tail())
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
        os.kill(self.pid, 9)
        raise TimeoutError(f"did not end within {limit} s; last output:\n" + self.tail())

    def tail(self):
        return self.out[-3000:].decode(errors="replace")


def step(text):
    print(f"readme check: {text}", flush=True)


def shell_round_trip(repo):
    step("cargo xtask run: shell, a command, Ctrl-A x")
    start = time.monotonic()
    p = Pty(["cargo", "xtask", "run"], repo)
    p.read_until(b"/ # ", FIRST_PROMPT_LIMIT)
    step(f"  prompt after {time.monotonic() - start:.1f} s")
    p.send(b"echo readme-$((6*7))\r")
    p.read_until(b"readme-42", 60)
    p.send(b"\x01x")
    status = p.wait(60)
    assert status == 0, f"cargo xtask run ended with {status} after Ctrl-A x:\n{p.tail()}"
    step("  ok (status 0)")


def failing_vmm_fails(repo):
    step("cargo xtask run -- --cpus 300: fails as the VMM does")
    r = subprocess.run(["cargo", "xtask", "run", "--", "--cpus", "300"], cwd=repo,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=PROMPT_LIMIT)
    err = r.stderr.decode(errors="replace") + r.stdout.decode(errors="replace")
    assert r.returncode != 0, f"status 0 for a refused command line:\n{err[-3000:]}"
    assert "vCPUs" in err, f"the VMM's reason is missing:\n{err[-3000:]}"
    step(f"  ok (status {r.returncode})")


def qmp_from_the_host(repo):
    from qemu.qmp import QMPClient

    step("cargo xtask run -- --qmp PATH: QEMU's Python client from this host")
    sock = os.path.join(tempfile.mkdtemp(prefix="readme-check-"), "vmm.qmp")
    p = Pty(["cargo", "xtask", "run", "--", "--qmp", sock], repo)
    p.read_until(b"/ # ", PROMPT_LIMIT)

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

    asyncio.run(asyncio.wait_for(drive(), 60))
    status = p.wait(60)
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
