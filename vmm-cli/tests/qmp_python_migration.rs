//! QEMU's own Python client (`qemu.qmp` from PyPI) drives both ends of a
//! live migration between two VMMs on this host's `/dev/kvm`, as a QEMU
//! user's script would: the destination, started with `--incoming defer`,
//! takes `migrate-incoming`; the source `migrate-set-capabilities` and
//! `migrate`, its `MIGRATION` events up to `completed`; `query-migrate`
//! and `query-status` on both; then a `snapshot-save` job on the
//! destination, its `JOB_STATUS_CHANGE` events, `query-jobs`,
//! `job-dismiss`; `quit` on both.

mod common;

use common::qmp_client::{run_qemu_qmp_script, spawn};
use common::*;
use vmm_pc::test_guests;

const SCRIPT: &str = r#"
import asyncio, sys
from qemu.qmp import QMPClient

async def connect(name, path):
    qmp = QMPClient(name)
    for _ in range(300):
        try:
            await qmp.connect(path)
            return qmp
        except Exception:
            await asyncio.sleep(0.01)
    raise SystemExit('no QMP socket for ' + name)

async def main(src_path, dst_path, uri, snap):
    src = await connect('src', src_path)
    dst = await connect('dst', dst_path)
    print('dst', (await dst.execute('query-status'))['status'])
    await dst.execute('migrate-incoming', {'uri': uri})
    await src.execute('migrate-set-capabilities',
                      {'capabilities': [{'capability': 'events', 'state': True}]})
    with src.listener('MIGRATION') as listener:
        await src.execute('migrate', {'uri': uri})
        async for ev in listener:
            if ev['data']['status'] in ('completed', 'failed', 'cancelled'):
                print('src event', ev['data']['status'])
                break
    info = await src.execute('query-migrate')
    print('src', info['status'], info['ram']['total'])
    print('src', (await src.execute('query-status'))['status'])
    status = None
    for _ in range(500):
        status = (await dst.execute('query-status'))['status']
        if status == 'running':
            break
        await asyncio.sleep(0.01)
    print('dst', status, (await dst.execute('query-migrate'))['status'])
    with dst.listener('JOB_STATUS_CHANGE') as jobs:
        await dst.execute('snapshot-save', {'job-id': 's0', 'tag': 't', 'vmstate': snap,
                                            'devices': []})
        async for ev in jobs:
            if ev['data']['status'] == 'concluded':
                print('job concluded')
                break
    job = (await dst.execute('query-jobs'))[0]
    print('job', job['id'], job['type'], job['status'], 'error' in job)
    await dst.execute('job-dismiss', {'id': 's0'})
    print('jobs', len(await dst.execute('query-jobs')))
    for qmp in (src, dst):
        await qmp.execute('quit')
        try:
            await qmp.disconnect()
        except EOFError:
            pass  # the VMM quit and closed the socket first, as QEMU does

asyncio.run(main(*sys.argv[1:]))
"#;

#[test]
fn qemu_python_client_drives_both_ends_of_a_migration() {
    if !kvm("qmp_python_migration") {
        return;
    }
    let guest = test_guests::counter(100_000);
    let dir = TempDir::new("py-mig-src");
    let (src, src_sock) = spawn(&dir, &guest, &["--serial", "none"]);
    let dir2 = TempDir::new("py-mig-dst");
    let (dst, dst_sock) = spawn(&dir2, &guest, &["--serial", "none", "--incoming", "defer"]);
    let uri = format!("unix:{}", dir2.0.join("mig.sock").display());
    let snap = dir2.0.join("after.snap");
    let lines = run_qemu_qmp_script(
        &dir,
        SCRIPT,
        &[
            src_sock.as_os_str(),
            dst_sock.as_os_str(),
            uri.as_ref(),
            snap.as_os_str(),
        ],
    );
    assert_eq!(
        lines,
        [
            "dst inmigrate",
            "src event completed",
            "src completed 67108864",
            "src postmigrate",
            "dst running completed",
            "job concluded",
            "job s0 snapshot-save concluded False",
            "jobs 0",
        ]
    );
    for vmm in [src, dst] {
        let o = wait(vmm);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(snap.exists());
}
