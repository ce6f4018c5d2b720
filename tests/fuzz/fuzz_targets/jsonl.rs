//! Anchor, evaluation and benign sets are JSONL written by hand: arbitrary bytes parse to items
//! or to an error naming the line, never a panic.
#![no_main]

mod budget;

use std::path::Path;

use cmrm::data;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: budget::Counting = budget::Counting;

fuzz_target!(|data: &[u8]| {
    let peak = budget::peak_of(|| {
        let path = Path::new("sets/fuzz.jsonl");
        match data::parse_jsonl(data, path) {
            Ok(items) => assert!(!items.is_empty()),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("sets/fuzz.jsonl"), "{msg}");
            }
        }
    });
    assert!(
        peak <= 64 * data.len() + (1 << 20),
        "{} input bytes needed {peak} bytes",
        data.len()
    );
});
