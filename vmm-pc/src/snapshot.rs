//! Snapshots of the whole machine (QEMU's `snapshot-save`/`snapshot-load`
//! with the VM state in a file): the file format ([`format`]) and the jobs
//! QMP tracks them as ([`jobs`]), and the live-migration stream on the same
//! framing ([`stream`]); the optional `runstate` section both carry for a
//! guest in S3 ([`runstate`]). The machine's side (what goes in, in
//! what order) is `machine/snapshot.rs`.

pub mod format;
pub mod image;
pub mod jobs;
pub mod mapped;
pub mod pagemap;
pub mod pmemsave;
pub mod runstate;
pub mod stream;
