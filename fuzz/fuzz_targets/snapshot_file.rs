//! The snapshot file reader (`vmm_pc::snapshot::format::read`) on
//! arbitrary bytes: an error or a file, never a panic or an allocation past
//! the limit; a file read back is written again byte for byte the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_pc::snapshot::format;

fuzz_target!(|data: &[u8]| {
    let Ok((shape, sections)) = format::read(&mut &data[..], 1 << 16) else {
        return;
    };
    assert!(sections.iter().all(|s| s.data.len() <= 1 << 16));
    let refs: Vec<(&str, &[u8])> = sections
        .iter()
        .map(|s| (s.name.as_str(), s.data.as_slice()))
        .collect();
    let mut out = Vec::new();
    format::write(&mut out, &shape, &refs).expect("a file that was read writes");
    let (shape2, sections2) = format::read(&mut out.as_slice(), 1 << 16).expect("and reads");
    assert_eq!(shape, shape2);
    assert_eq!(sections, sections2);
});
