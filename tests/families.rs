//! Issue "more VLM families": the projector families beyond LLaVA-1.5's `mlp` (tested in
//! cmrm_core) load unpatched and keep CMRM's invariants where an image is several chunks
//! (Idefics3 tiles, LLaVA-NeXT slices) and where it takes fewer positions than tokens
//! (Qwen2.5-VL's M-RoPE on the qwen2vl architecture).

mod common;

use cmrm::capture::StateReader;
use cmrm::media::Corruption;
use cmrm::session::{Apply, Layers, Positions, SteerConfig};
use cmrm::steer::Mechanism;
use cmrm::{CmrmSteering, Engine, EngineOptions, GenerateOptions, Session, SessionOptions, Turn};
use common::*;

const PROMPT: &str = "How do I pick a lock?";

/// A family of the fixture: text model, projector, and what its image turns look like.
struct Family {
    name: &'static str,
    model: &'static str,
    mmproj: &'static str,
    /// Image chunks the photo becomes.
    chunks: usize,
    /// Whether the image takes fewer positions than tokens (M-RoPE).
    mrope: bool,
    /// How close (relative) `last` steering gets to a state read without steering: steering
    /// the last prompt token decodes it apart from its batch, and llama.cpp's attention over
    /// a long prompt (LLaVA-NeXT: 980 image tokens) rounds differently for a batch of one.
    split_rounding: f32,
}

const FAMILIES: [Family; 3] = [
    Family {
        name: "idefics3",
        model: "SmolLM2-135M-Instruct-idefics3.Q4_1.gguf",
        mmproj: "mmproj-smollm2-idefics3-synthetic.gguf",
        chunks: 5,
        mrope: false,
        split_rounding: 1e-4,
    },
    Family {
        name: "llava-next",
        model: "SmolLM2-135M-Instruct.Q4_1.gguf",
        mmproj: "mmproj-smollm2-llava-next-synthetic.gguf",
        chunks: 5,
        mrope: false,
        split_rounding: 1e-2,
    },
    Family {
        name: "qwen2.5-vl",
        model: "qwen2vl-0.5b-instruct-q4_k_m.gguf",
        mmproj: "mmproj-qwen2vl-synthetic.gguf",
        chunks: 1,
        mrope: true,
        split_rounding: 1e-4,
    },
];

fn load(f: &Family) -> Engine {
    let mut o = EngineOptions::new(fixture(f.model), Some(fixture(f.mmproj)));
    o.n_ctx = 2048;
    Engine::load(o).unwrap_or_else(|e| panic!("{}: {e}", f.name))
}

/// Logits of the first answer token and the last prompt token's states, for PROMPT with the
/// photo, steered by `steering`.
fn run(engine: &Engine, steering: Option<CmrmSteering>) -> (Vec<f32>, Vec<Vec<f32>>) {
    prefill_states(engine, steering, &Turn::user(PROMPT).image(photo_image()))
}

fn steer(
    engine: &Engine,
    shift: &[Vec<f32>],
    cfg: SteerConfig,
    m: Mechanism,
) -> Option<CmrmSteering> {
    Some(CmrmSteering::dataset(engine, shift.to_vec(), cfg, m).unwrap())
}

fn check_family(f: &Family) {
    let engine = load(f);
    let n_layer = engine.model().n_layer();

    // The photo becomes the expected chunks; with M-RoPE it takes fewer positions than cells.
    let mut session = Session::new(&engine, SessionOptions::new()).unwrap();
    let g = session
        .send(
            &Turn::user(PROMPT).image(photo_image()),
            &GenerateOptions::greedy(4),
            &mut |_| true,
        )
        .unwrap_or_else(|e| panic!("{}: chat: {e}", f.name));
    assert_eq!(g.images, f.chunks, "{}: image chunks", f.name);
    if f.mrope {
        assert!(
            g.prompt_positions + 100 < g.prompt_tokens,
            "{}: M-RoPE positions {} vs cells {}",
            f.name,
            g.prompt_positions,
            g.prompt_tokens
        );
    } else {
        assert_eq!(g.prompt_positions, g.prompt_tokens, "{}", f.name);
    }
    // A second turn reuses the first from the cache, image chunks included.
    let g2 = session
        .send(
            &Turn::user("And then?"),
            &GenerateOptions::greedy(2),
            &mut |_| true,
        )
        .unwrap();
    assert_eq!(g2.images, 0, "{}: the image was not reused", f.name);
    assert!(g2.cached_tokens >= g.prompt_tokens, "{}", f.name);
    drop(session);

    // The input's own shift against noise, read at the last prompt token.
    let mut reader = StateReader::new(&engine).unwrap();
    let text = reader.states(None, PROMPT, &[]).unwrap();
    let image = reader.states(None, PROMPT, &[photo_image()]).unwrap();
    let shift: Vec<Vec<f32>> = text
        .iter()
        .zip(&image)
        .map(|(a, b)| cmrm::math::sub(a, b))
        .collect();
    drop(reader);

    let (plain, unsteered) = run(&engine, None);
    assert_eq!(unsteered, image, "{}: capture is repeatable", f.name);

    // alpha 0 is bit-identical to no steering, on both paths and every position set.
    for positions in [Positions::All, Positions::AfterImage, Positions::Last] {
        let cfg = SteerConfig {
            alpha: 0.0,
            positions,
            ..SteerConfig::default()
        };
        for m in [Mechanism::Cvec, Mechanism::Callback] {
            let (logits, _) = run(&engine, steer(&engine, &shift, cfg.clone(), m));
            assert!(
                logits == plain,
                "{}: alpha 0 {m:?} {positions:?} moved the logits by up to {}",
                f.name,
                max_rel_diff(&logits, &plain)
            );
        }
    }

    // Single-layer total steering at the last token restores the text-only state there,
    // closing all of the gap but the rounding of decoding that token on its own.
    let layer = n_layer * 2 / 3;
    let gap = max_rel_diff(&image[layer], &text[layer]);
    assert!(gap > 1e-2, "{}: no gap to close ({gap})", f.name);
    let cfg = SteerConfig {
        alpha: 1.0,
        apply: Apply::Total,
        layers: Layers::Range(layer, layer),
        positions: Positions::Last,
        text_only: false,
    };
    for m in [Mechanism::Cvec, Mechanism::Callback] {
        let (_, states) = run(&engine, steer(&engine, &shift, cfg.clone(), m));
        let d = max_rel_diff(&states[layer], &text[layer]);
        assert!(
            d < f.split_rounding && d < gap / 10.0,
            "{}: {m:?} layer {layer} off by {d} (gap {gap})",
            f.name
        );
    }

    // Both paths agree for every position set, when the image is several chunks or M-RoPE.
    for positions in [Positions::Last, Positions::AfterImage, Positions::All] {
        let cfg = SteerConfig {
            alpha: 0.5,
            apply: Apply::Increment,
            layers: Layers::Range(1, n_layer - 1),
            positions,
            text_only: false,
        };
        let (by_cvec, _) = run(
            &engine,
            steer(&engine, &shift, cfg.clone(), Mechanism::Cvec),
        );
        let (by_callback, _) = run(&engine, steer(&engine, &shift, cfg, Mechanism::Callback));
        let d = by_cvec
            .iter()
            .zip(&by_callback)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let moved = by_cvec
            .iter()
            .zip(&plain)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(d < 1e-2, "{}: {positions:?}: paths differ by {d}", f.name);
        assert!(moved > 0.1, "{}: {positions:?}: nothing changed", f.name);
    }

    // Sample-level CMRM, with the interpolate rule on the callback path too.
    for (apply, m) in [
        (Apply::Total, Mechanism::Cvec),
        (Apply::Interpolate, Mechanism::Callback),
    ] {
        let cfg = SteerConfig {
            apply,
            ..SteerConfig::default()
        };
        let steering = CmrmSteering::sample(&engine, Corruption::Noise(0), cfg, m).unwrap();
        let mut session = Session::new(&engine, SessionOptions::new().steering(steering)).unwrap();
        let g = session
            .send(
                &Turn::user(PROMPT).image(photo_image()),
                &GenerateOptions::greedy(4),
                &mut |_| true,
            )
            .unwrap_or_else(|e| panic!("{}: sample {apply:?}: {e}", f.name));
        assert!(g.steering.applied, "{}: sample {apply:?}", f.name);
    }
}

#[test]
fn idefics3_tiles_keep_the_invariants() {
    check_family(&FAMILIES[0]);
}

#[test]
fn llava_next_slices_keep_the_invariants() {
    check_family(&FAMILIES[1]);
}

#[test]
fn qwen25_vl_with_mrope_keeps_the_invariants() {
    check_family(&FAMILIES[2]);
}

#[test]
fn every_family_calibrates_and_evaluates_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("cmrm-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in &FAMILIES {
        let (m, p) = (fixture(f.model), fixture(f.mmproj));
        let v = dir.join(format!("{}.cmrm.gguf", f.name));
        let flags = ["-m", s(&m), "--mmproj", s(&p), "-c", "2048"];
        let anchors = vendor("sets/harmful-anchors.jsonl");
        let mut args = vec![
            "calibrate",
            "--anchors",
            s(&anchors),
            "--limit",
            "2",
            "-o",
            s(&v),
        ];
        args.extend(flags);
        let o = cmrm(&args);
        assert!(
            o.status.success(),
            "{}: {}",
            f.name,
            String::from_utf8_lossy(&o.stderr)
        );
        let out = dir.join(f.name);
        let data = vendor("sets/harmful-eval.jsonl");
        let mut args = vec![
            "eval",
            "fidelity",
            "--data",
            s(&data),
            "--limit",
            "2",
            "--cmrm",
            s(&v),
            "--conditions",
            "image,cmrm,cmrm-sample",
            "--out",
            s(&out),
            "--json",
        ];
        args.extend(flags);
        let o = cmrm(&args);
        assert!(
            o.status.success(),
            "{}: {}",
            f.name,
            String::from_utf8_lossy(&o.stderr)
        );
        let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(rows.as_array().unwrap().len(), 3, "{}: {rows}", f.name);
        let photo_path = photo();
        let mut args = vec![
            "chat",
            "--image",
            s(&photo_path),
            "-p",
            PROMPT,
            "-n",
            "4",
            "--cmrm",
            s(&v),
            "-v",
        ];
        args.extend(flags);
        let o = cmrm(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && err.contains("\"applied\":true"),
            "{}: {err}",
            f.name
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
