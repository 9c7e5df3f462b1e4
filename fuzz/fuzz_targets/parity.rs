//! The parity file reader (`<model>.parity.safetensors`, docs/parity-file.md): parse, read every
//! sample's input and logits the way `device parity` does, and check that writing the parsed
//! file back gives the same file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::parity::{Parity, FORMAT, VERSION};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(p) = Parity::parse(data) else { return };
    let [_, c, h, w] = p.input_shape;
    // An input may claim many zero-sized samples: look at the first few.
    for i in 0..p.len().min(64) {
        assert_eq!(p.input(i).len(), c * h * w);
        assert_eq!(p.logits(i).len(), p.num_classes);
        assert_eq!(p.logits_int8(i).map(<[f32]>::len).unwrap_or(p.num_classes), p.num_classes);
    }
    let bytes = p.to_bytes().expect("a parsed parity file can be written back");
    let q = Parity::parse(&bytes).expect("a written parity file parses");
    assert_eq!((q.input_shape, q.num_classes, &q.labels), (p.input_shape, p.num_classes, &p.labels));
    assert_eq!(bits(&q.inputs), bits(&p.inputs));
    assert_eq!(bits(&q.logits), bits(&p.logits));
    assert_eq!(q.logits_int8.as_deref().map(bits), p.logits_int8.as_deref().map(bits));
    let mut meta = p.metadata.clone();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("version".into(), VERSION.into());
    assert_eq!(q.metadata, meta);
});
