//! Issue "cost at real scale": an image is encoded once per process. A fixed corruption image
//! (blank, or a file) of calibration and sample-level CMRM, and a photo shown again, come from
//! the engine's embedding cache, with results identical to encoding every time. (Seeded noise
//! is drawn anew for every anchor or item, so each of those is encoded once.)

mod common;

use cmrm::calibrate::{self, CalibrateOptions};
use cmrm::embeddings::EmbeddingStats;
use cmrm::media::{self, Corruption};
use cmrm::session::SteerConfig;
use cmrm::steer::Mechanism;
use cmrm::vectors::Method;
use cmrm::{CmrmSteering, Engine, GenerateOptions, Session, SessionOptions, Turn};
use common::*;

fn engine_with_cache(bytes: usize) -> Engine {
    let mut o = options();
    o.image_cache_bytes = bytes;
    Engine::load(o).unwrap()
}

fn calibrate_three(engine: &Engine, out: &std::path::Path) -> cmrm::LayerVectors {
    let mut anchors = cmrm::data::read_jsonl(&vendor("sets/harmful-anchors.jsonl")).unwrap();
    anchors.truncate(3);
    let opts = CalibrateOptions {
        anchor_set: None,
        benign: None,
        method: Method::Mean,
        corruption: Corruption::Blank,
        system: None,
        shard: None,
        recommended: SteerConfig::default(),
    };
    let _ = std::fs::remove_file(out);
    calibrate::calibrate(engine, &anchors, &opts, out)
        .unwrap()
        .deltas
}

#[test]
fn a_fixed_corruption_image_is_encoded_once_and_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("cmrm-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let cached = engine_with_cache(64 << 20);
    let with_cache = calibrate_three(&cached, &dir.join("a.gguf"));
    assert_eq!(
        cached.embedding_stats(),
        EmbeddingStats {
            encoded: 1,
            reused: 2
        },
        "3 anchors, one blank image"
    );

    // Sample-level CMRM over two turns with a photo: the blank image is reused, the photo is
    // encoded once (the second turn reuses the KV cache, which holds it).
    let steering = CmrmSteering::sample(
        &cached,
        Corruption::Blank,
        SteerConfig::default(),
        Mechanism::Cvec,
    )
    .unwrap();
    let mut session = Session::new(&cached, SessionOptions::new().steering(steering)).unwrap();
    let photo = media::load(photo().to_str().unwrap()).unwrap();
    for text in ["What is in this picture?", "And its colours?"] {
        let turn = Turn::user(text).image(photo.clone());
        session
            .send(&turn, &GenerateOptions::greedy(2), &mut |_| true)
            .unwrap();
    }
    let s = cached.embedding_stats();
    assert_eq!(
        s.encoded, 3,
        "noise once, the photo once per turn shown: {s:?}"
    );
    assert!(s.reused >= 4, "{s:?}");
    drop(session);
    drop(cached);

    let uncached = engine_with_cache(0);
    let without = calibrate_three(&uncached, &dir.join("b.gguf"));
    assert_eq!(
        uncached.embedding_stats().encoded,
        3,
        "no cache: every anchor encodes"
    );
    assert_eq!(
        with_cache, without,
        "the cache changes no bit of the shifts"
    );
    std::fs::remove_dir_all(&dir).ok();
}
