# gdb script for `cargo xtask startup-order`: run the program gdb was given
# (`gdb -batch -x THIS --args vmm ...`) once, with a one-shot breakpoint on
# every function, and write the functions it ran, in the order it first ran
# them, as addresses relative to the program's load address.
#
# STARTUP_ORDER_ADDRESSES: a file of hexadecimal function addresses, one per
# line (from `nm`); STARTUP_ORDER_OUT: where the hits go, one per line, then
# a last line `exit N` with the program's exit status.
import os

import gdb

addresses = [int(line, 16) for line in open(os.environ["STARTUP_ORDER_ADDRESSES"]) if line.strip()]
out = os.environ["STARTUP_ORDER_OUT"]

for command in ("set pagination off", "set confirm off", "set print thread-events off",
                "set print inferior-events off", "set breakpoint always-inserted on",
                "handle all nostop noprint pass"):
    gdb.execute(command, to_string=True)

gdb.execute("starti", to_string=True)
program = os.path.realpath(gdb.current_progspace().filename)
base = None
for line in gdb.execute("info proc mappings", to_string=True).splitlines():
    fields = line.split()
    if len(fields) >= 5 and os.path.realpath(fields[-1]) == program:
        base = int(fields[0], 16)
        break
if base is None:
    raise gdb.GdbError("no mapping of " + program)

by_number = {}
for address in addresses:
    bp = gdb.Breakpoint("*0x%x" % (base + address), internal=True, temporary=True)
    bp.silent = True
    by_number[bp.number] = address

hits = []


def on_stop(event):
    if isinstance(event, gdb.BreakpointEvent):
        for bp in event.breakpoints:
            if bp.number in by_number:
                hits.append(by_number[bp.number])


gdb.events.stop.connect(on_stop)
while gdb.selected_inferior().pid:
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break

code = gdb.convenience_variable("_exitcode")
with open(out, "w") as f:
    for address in hits:
        f.write("%x\n" % address)
    f.write("exit %s\n" % (int(code) if code is not None else "none"))
