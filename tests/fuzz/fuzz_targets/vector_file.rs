//! Vector files come from strangers next to models: arbitrary bytes through cmrm's GGUF reader
//! and `CmrmVectors::parse`, and a parsed file through the checks against a model. Never a
//! panic, and never more memory than a small multiple of the file.
#![no_main]

mod budget;

use std::path::Path;

use cmrm::vectors::{CmrmVectors, FileId, ModelId};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: budget::Counting = budget::Counting;

fuzz_target!(|data: &[u8]| {
    let peak = budget::peak_of(|| {
        let path = Path::new("fuzz.cmrm.gguf");
        if let Ok(v) = CmrmVectors::parse(data, path) {
            let model = ModelId {
                n_embd: 576,
                n_layer: 30,
                arch: "llama".into(),
                model: FileId {
                    fingerprint: "0123456789abcdef".into(),
                    ..FileId::default()
                },
                mmproj: None,
            };
            let _ = v.check_model(path, &model, false);
            let _ = v.check_model(path, &model, true);
            let _ = v.control_rows(&v.recommended);
        }
    });
    assert!(
        peak <= 32 * data.len() + (1 << 20),
        "{} input bytes needed {peak} bytes",
        data.len()
    );
});
