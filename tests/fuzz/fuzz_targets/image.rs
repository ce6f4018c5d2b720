//! Images come from anywhere: arbitrary bytes as an image file and as a data URI never panic,
//! and decoding never needs more than the decoder's own limit.
#![no_main]

mod budget;

use cmrm::media;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: budget::Counting = budget::Counting;

fuzz_target!(|data: &[u8]| {
    let peak = budget::peak_of(|| {
        let _ = media::Image::decode(data.to_vec(), "fuzz");
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(bytes) = media::decode_data_uri(text) {
                let _ = media::decode(&bytes, "data URI");
            }
            let _ = media::decode_base64(text);
        }
    });
    assert!(
        peak as u64 <= 8 * media::MAX_PIXELS + 16 * data.len() as u64 + (8 << 20),
        "{} input bytes needed {peak} bytes",
        data.len()
    );
});
