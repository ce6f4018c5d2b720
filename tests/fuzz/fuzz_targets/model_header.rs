//! The GGUF header of a model or mmproj, as cmrm reads it before llama.cpp sees the file:
//! arbitrary bytes never panic and never need more than a small multiple of their size.
#![no_main]

mod budget;

use cmrm::gguf;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: budget::Counting = budget::Counting;

fuzz_target!(|data: &[u8]| {
    let peak = budget::peak_of(|| {
        if let Ok(h) = gguf::parse_header(data) {
            let _ = gguf::projector_width_of(&h);
            let _ = cmrm::quant::describe(&h);
            let read = |t: &gguf::TensorInfo| gguf::f32_tensor_in(data, &h, t);
            let _ = cmrm::identity::Identity::of_model(&h, &read);
            let _ = cmrm::identity::Identity::of_projector(&h, &read);
            for t in &h.tensors {
                let _ = gguf::f32_tensor_in(data, &h, t);
            }
        }
    });
    assert!(
        peak <= 32 * data.len() + (1 << 20),
        "{} input bytes needed {peak} bytes",
        data.len()
    );
});
