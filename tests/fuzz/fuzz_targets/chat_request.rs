//! A chat-completions body comes from any client: arbitrary bytes parse to a request within
//! the server's limits or to an OpenAI-shaped 4xx error, never a panic, in bounded memory.
#![no_main]

mod budget;

use cmrm::sampling::SamplingParams;
use cmrm::serve::{parse, Limits, Piece, Speaker, MAX_STOP, MAX_STOP_BYTES};
use cmrm::settings::SteerOverride;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: budget::Counting = budget::Counting;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_image_bytes: 1 << 20,
        max_image_pixels: 1 << 22,
        max_images: 4,
        max_tokens: 256,
        default_max_tokens: None,
        media_path: None,
        media_fetch: false,
    };
    let peak = budget::peak_of(|| {
        match parse(data, &SamplingParams::default(), &SteerOverride::default(), &limits) {
            Ok(p) => {
                assert!(p.max_tokens >= 1 && p.max_tokens <= limits.max_tokens);
                assert!(p.stop.len() <= MAX_STOP);
                assert!(p.logprobs.map_or(true, |k| k <= 20));
                assert!(p.stop.iter().all(|s| !s.is_empty() && s.len() <= MAX_STOP_BYTES));
                assert!(matches!(
                    p.messages.last().map(|m| m.speaker),
                    Some(Speaker::User | Speaker::Tool)
                ));
                assert!(p.tools.as_ref().map_or(true, |t| !t.tools.is_empty()
                    && t.tools.len() <= cmrm::serve::MAX_TOOLS));
                let images = p
                    .messages
                    .iter()
                    .flat_map(|m| &m.pieces)
                    .filter(|x| matches!(x, Piece::Image(_)))
                    .count();
                assert!(images <= limits.max_images);
                assert!(p
                    .messages
                    .iter()
                    .filter(|m| m.speaker != Speaker::User)
                    .all(|m| m.pieces.iter().all(|x| matches!(x, Piece::Text(_)))));
                assert!(p.sampling.check().is_ok());
                assert!(p.sampling.temp >= 0.0);
            }
            Err(e) => {
                assert!((400..500).contains(&e.status), "{}: {}", e.status, e.message);
                assert!(!e.message.is_empty());
                let body = e.body();
                assert_eq!(body["error"]["code"], e.status);
            }
        }
    });
    assert!(
        peak <= 64 * data.len() + (1 << 20),
        "{} input bytes needed {peak} bytes",
        data.len()
    );
});
