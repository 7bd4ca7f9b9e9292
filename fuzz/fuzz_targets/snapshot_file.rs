//! The snapshot file reader (`vmm_pc::snapshot::format::read_counted`) on
//! arbitrary bytes: an error or a file, never a panic or an allocation past
//! the limit; a file read back is written again byte for byte the same,
//! the sections' end where the bytes were read to; a `ram@` section's RAM
//! image place decodes to whole pages or is refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm_pc::snapshot::format;

fuzz_target!(|data: &[u8]| {
    let Ok((shape, sections, end)) = format::read_counted(&mut &data[..], 1 << 16) else {
        return;
    };
    assert!(end as usize <= data.len());
    assert!(sections.iter().all(|s| s.data.len() <= 1 << 16));
    for s in sections.iter().filter(|s| s.name.starts_with("ram@")) {
        if let Ok(image) = format::RamImage::decode(&s.data) {
            assert_eq!(image.offset % format::PAGE as u64, 0);
            assert_eq!(image.len % format::PAGE as u64, 0);
            assert!(image.end().is_some());
            assert_eq!(format::RamImage::decode(&image.encode()).unwrap(), image);
        }
    }
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
