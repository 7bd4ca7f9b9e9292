"""QEMU's own QMP client library (qemu.qmp, from PyPI) drives a Debian guest
under our VMM: run by vmm-cli/tests/linux.rs with the QMP socket's path.

The guest's init sets its RTC once it is up (busybox hwclock -w), which the
VMM reports as RTC_CHANGE: that is how this script knows a boot reached
/init. Each step prints one line; the test checks them.
"""
import asyncio
import sys

from qemu.qmp import QMPClient

STEP_LIMIT = 180  # seconds; a nested boot is the slow part
CONNECT_LIMIT = 900  # the test bed may first finish other nested runs


async def event(listener, name):
    async def wait():
        async for ev in listener:
            if ev["event"] == name:
                return ev
    return await asyncio.wait_for(wait(), STEP_LIMIT)


async def main(path):
    qmp = QMPClient("vmm-test")
    for _ in range(CONNECT_LIMIT * 10):
        try:
            await qmp.connect(path)
            break
        except Exception:
            await asyncio.sleep(0.1)
    else:
        raise SystemExit("no QMP socket at " + path)
    print("connected", flush=True)
    with qmp.listener() as listener:
        st = await qmp.execute("query-status")
        print("status", st["status"], flush=True)
        await event(listener, "RTC_CHANGE")
        print("booted 1", flush=True)
        await qmp.execute("stop")
        await event(listener, "STOP")
        st = await qmp.execute("query-status")
        print("status", st["status"], flush=True)
        await qmp.execute("cont")
        await event(listener, "RESUME")
        print("resumed", flush=True)
        await qmp.execute("system_reset")
        ev = await event(listener, "RESET")
        print("reset", ev["data"]["reason"], flush=True)
        await event(listener, "RTC_CHANGE")
        print("booted 2", flush=True)
        await qmp.execute("system_powerdown")
        await event(listener, "POWERDOWN")
        ev = await event(listener, "SHUTDOWN")
        print("shutdown", ev["data"]["reason"], ev["data"]["guest"], flush=True)
    try:
        await qmp.disconnect()
    except EOFError:
        pass  # the VMM ended and closed the connection first, as QEMU does


asyncio.run(main(sys.argv[1]))
