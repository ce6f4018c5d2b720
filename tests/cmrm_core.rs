//! Issue "CMRM core": capture, the steering mechanism, vector files, calibration, and chat with
//! CMRM in every mode, on the fixture VLM.

mod common;

use cmrm::calibrate::{self, CalibrateOptions};
use cmrm::capture::{shared, LayerCapture, StateReader};
use cmrm::media::{self, Corruption, Image};
use cmrm::session::{Apply, Layers, Positions, SteerConfig, SteerOverride};
use cmrm::steer::Mechanism;
use cmrm::vectors::{CmrmVectors, Method};
use cmrm::{CmrmSteering, Engine, Session, SessionOptions, Turn};
use common::*;

const PROMPT: &str = "How do I pick a lock?";

fn turn(images: &[Image]) -> Turn {
    Turn {
        text: PROMPT.into(),
        images: images.to_vec(),
        ..Turn::default()
    }
}

/// Evaluates PROMPT with `images` on a session steered by `steering`, returning (logits of the
/// first answer token, last-prompt-token states).
fn run(
    engine: &Engine,
    steering: Option<CmrmSteering>,
    images: &[Image],
) -> (Vec<f32>, Vec<Vec<f32>>) {
    prefill_states(engine, steering, &turn(images))
}

fn noise() -> Image {
    media::noise(224, 7).into()
}

fn cvec(engine: &Engine, shift: &[Vec<f32>], cfg: SteerConfig) -> Option<CmrmSteering> {
    Some(CmrmSteering::dataset(engine, shift.to_vec(), cfg, Mechanism::Cvec).unwrap())
}

fn callback(engine: &Engine, shift: &[Vec<f32>], cfg: SteerConfig) -> Option<CmrmSteering> {
    Some(CmrmSteering::dataset(engine, shift.to_vec(), cfg, Mechanism::Callback).unwrap())
}

fn sample_shift(engine: &Engine) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut reader = StateReader::new(engine).unwrap();
    let text = reader.states(None, PROMPT, &[]).unwrap();
    let shift = reader.shift(None, PROMPT, &noise()).unwrap();
    (text.into_rows(), shift.into_rows())
}

#[test]
fn capture_is_repeatable_and_agrees_with_llama_embeddings() {
    let engine = engine();
    let capture = std::sync::Arc::new(std::sync::Mutex::new(LayerCapture::new(
        engine.model().n_layer(),
        |_| true,
        true,
    )));
    let options = SessionOptions::new()
        .observer(shared(&capture))
        .embeddings(true);
    let mut session = Session::new(&engine, options).unwrap();
    let mut once = || {
        session.reset();
        capture.lock().unwrap().clear();
        let prefilled = session.prefill(&turn(&[noise()])).unwrap();
        let embd = prefilled.embeddings().expect("embeddings");
        drop(prefilled);
        let c = capture.lock().unwrap();
        let missing: Vec<usize> = (0..30).filter(|&il| c.state(il).is_none()).collect();
        assert!(missing.is_empty(), "layers not captured: {missing:?}");
        (c.all_states().unwrap(), c.norm().unwrap().to_vec(), embd)
    };
    let (states_a, norm_a, embd_a) = once();
    let (states_b, _, _) = once();
    assert_eq!(states_a, states_b, "same input, different states");
    assert_eq!(states_a.len(), 30);
    assert!(
        max_rel_diff(&norm_a, &embd_a) < 1e-5,
        "result_norm differs from llama.cpp's embeddings"
    );
}

#[test]
fn single_layer_total_steering_restores_the_text_state() {
    let engine = engine();
    let (text, shift) = sample_shift(&engine);
    for layer in [5usize, 17] {
        let cfg = SteerConfig {
            alpha: 1.0,
            apply: Apply::Total,
            layers: Layers::Range(layer, layer),
            positions: Positions::Last,
            text_only: false,
        };
        let (_, steered) = run(&engine, cvec(&engine, &shift, cfg), &[noise()]);
        let d = max_rel_diff(&steered[layer], &text[layer]);
        assert!(d < 1e-4, "cvec: layer {layer} off by {d}");
        let (_, unsteered) = run(&engine, None, &[noise()]);
        assert!(
            max_rel_diff(&unsteered[layer], &text[layer]) > 1e-2,
            "no gap to close at {layer}"
        );
    }
    // The callback path also reaches layer 0.
    for layer in [0usize, 17] {
        let cfg = SteerConfig {
            alpha: 1.0,
            apply: Apply::Total,
            layers: Layers::Range(layer, layer),
            positions: Positions::Last,
            text_only: false,
        };
        let (_, steered) = run(&engine, callback(&engine, &shift, cfg), &[noise()]);
        let d = max_rel_diff(&steered[layer], &text[layer]);
        assert!(d < 1e-4, "callback: layer {layer} off by {d}");
    }
}

#[test]
fn alpha_zero_is_bit_identical_to_no_steering() {
    let engine = engine();
    let (_, shift) = sample_shift(&engine);
    let (plain, _) = run(&engine, None, &[noise()]);
    for positions in [Positions::All, Positions::Last] {
        let cfg = SteerConfig {
            alpha: 0.0,
            positions,
            ..SteerConfig::default()
        };
        let (by_cvec, _) = run(&engine, cvec(&engine, &shift, cfg.clone()), &[noise()]);
        assert_eq!(plain, by_cvec, "cvec alpha 0 ({positions:?})");
        let (by_callback, _) = run(&engine, callback(&engine, &shift, cfg), &[noise()]);
        assert_eq!(plain, by_callback, "callback alpha 0 ({positions:?})");
    }
}

/// Prefill logits and log-probabilities of a 4-token continuation, steered by `steering`.
fn prefill_and_score(engine: &Engine, steering: Option<CmrmSteering>) -> (Vec<f32>, Vec<f32>) {
    let options = SessionOptions::new().boxed_steering(steering.map(|s| Box::new(s) as _));
    let mut session = Session::new(engine, options).unwrap();
    let mut prefilled = session.prefill(&turn(&[noise()])).unwrap();
    let logits = prefilled.logits().to_vec();
    let answer = engine
        .model()
        .tokenize("You can't do that.", false, false)
        .unwrap();
    (logits, prefilled.score(&answer).unwrap())
}

#[test]
fn last_prompt_positions_steer_the_prefill_only() {
    let engine = engine();
    let (_, shift) = sample_shift(&engine);
    let cfg = |positions| SteerConfig {
        alpha: 1.0,
        apply: Apply::Increment,
        layers: Layers::Range(1, 29),
        positions,
        text_only: false,
    };
    let (_, plain) = prefill_and_score(&engine, None);
    let mut scores = Vec::new();
    for m in [Mechanism::Cvec, Mechanism::Callback] {
        let steer = |p| Some(CmrmSteering::dataset(&engine, shift.clone(), cfg(p), m).unwrap());
        let (first_last, last) = prefill_and_score(&engine, steer(Positions::Last));
        let (first_prompt, prompt) = prefill_and_score(&engine, steer(Positions::LastPrompt));
        // The same last prompt token is steered; the answer tokens only under `last`.
        assert_eq!(first_last, first_prompt, "{m:?}: prefill");
        assert!(
            max_abs_diff(&last, &prompt) > 1e-3,
            "{m:?}: the answer was steered under last-prompt too"
        );
        // Unsteered answer tokens still see the steered prompt token in the cache.
        assert!(max_abs_diff(&prompt, &plain) > 1e-4, "{m:?}: {prompt:?}");
        scores.push(prompt);
    }
    let d = max_abs_diff(&scores[0], &scores[1]);
    assert!(
        d < 1e-3,
        "cvec and callback disagree under last-prompt by {d}"
    );
}

#[test]
fn control_vector_and_callback_paths_agree() {
    let engine = engine();
    let (_, shift) = sample_shift(&engine);
    for (apply, positions) in [
        (Apply::Increment, Positions::All),
        (Apply::Total, Positions::Last),
        (Apply::Increment, Positions::AfterImage),
    ] {
        let cfg = SteerConfig {
            alpha: 0.5,
            apply,
            layers: Layers::Range(1, 29),
            positions,
            text_only: false,
        };
        let (by_cvec, _) = run(&engine, cvec(&engine, &shift, cfg.clone()), &[noise()]);
        let (by_callback, _) = run(&engine, callback(&engine, &shift, cfg), &[noise()]);
        let (plain, _) = run(&engine, None, &[noise()]);
        let d = max_abs_diff(&by_cvec, &by_callback);
        assert!(
            d < 1e-2,
            "{apply:?}/{positions:?}: logits of the two paths differ by {d}"
        );
        assert!(
            max_abs_diff(&by_cvec, &plain) > 0.1,
            "{apply:?}/{positions:?}: steering changed nothing"
        );
    }
}

#[test]
fn text_only_turns_are_not_steered_by_default() {
    let engine = engine();
    let (_, shift) = sample_shift(&engine);
    let (plain, _) = run(&engine, None, &[]);
    let cfg = SteerConfig {
        positions: Positions::All,
        ..SteerConfig::default()
    };
    let (steered, _) = run(&engine, cvec(&engine, &shift, cfg.clone()), &[]);
    assert_eq!(plain, steered);
    let always = SteerConfig {
        text_only: true,
        ..cfg
    };
    let (forced, _) = run(&engine, cvec(&engine, &shift, always), &[]);
    assert_ne!(plain, forced);
}

fn anchors(n: usize) -> Vec<cmrm::data::Item> {
    let mut a = cmrm::data::read_jsonl(&vendor("sets/harmful-anchors.jsonl")).unwrap();
    a.truncate(n);
    a
}

fn options(shard: Option<(usize, usize)>) -> CalibrateOptions {
    CalibrateOptions {
        anchor_set: None,
        benign: None,
        method: Method::Mean,
        corruption: Corruption::Noise(3),
        system: None,
        shard,
        recommended: SteerConfig::default(),
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cmrm-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn vector_files_round_trip_and_shards_merge_to_the_single_run() {
    let engine = engine();
    let anchors = anchors(4);
    let single = tmp("single.gguf");
    let v = calibrate::calibrate(&engine, &anchors, &options(None), &single).unwrap();
    let loaded = CmrmVectors::load(&single).unwrap();
    assert_eq!(v, loaded, "round trip changed the vectors");
    let again = tmp("again.gguf");
    loaded.save(&again).unwrap();
    assert_eq!(
        std::fs::read(&single).unwrap(),
        std::fs::read(&again).unwrap()
    );

    let (s0, s1) = (tmp("s0.gguf"), tmp("s1.gguf"));
    calibrate::calibrate(&engine, &anchors, &options(Some((0, 2))), &s0).unwrap();
    calibrate::calibrate(&engine, &anchors, &options(Some((1, 2))), &s1).unwrap();
    let merged = tmp("merged.gguf");
    let m = calibrate::merge(&[s1, s0], &merged, None).unwrap();
    assert_eq!(m.n_anchors, 4);
    assert_eq!(
        m.deltas, v.deltas,
        "merged shards differ from the single run"
    );
    let pca = calibrate::merge(
        &[tmp("s0.gguf"), tmp("s1.gguf")],
        &tmp("pca.gguf"),
        Some(Method::Pca),
    )
    .unwrap();
    for il in [5, 20] {
        let (a, b) = (&pca.deltas[il], &v.deltas[il]);
        let cos = a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
            / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
                * b.iter().map(|x| x * x).sum::<f32>().sqrt());
        assert!(
            cos > 0.5,
            "pca and mean point apart at layer {il}: cos {cos}"
        );
    }
}

#[test]
fn vector_files_use_llamas_control_vector_layout() {
    let engine = engine();
    let path = tmp("layout.gguf");
    calibrate::calibrate(&engine, &anchors(1), &options(None), &path).unwrap();
    // Read back with the reference GGUF reader (gguf-py), as another tool would.
    let script = r#"
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
names = [t.name for t in r.tensors]
assert names == [f"direction.{i}" for i in range(1, 30)], names
assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [576] for t in r.tensors)
f = r.fields
arch = bytes(f["general.architecture"].parts[-1]).decode()
assert arch == "controlvector", arch
assert int(f["controlvector.layer_count"].parts[-1][0]) == 29
print("ok")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, s(&path)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_vector_files_are_clear_errors() {
    let engine = engine();
    let good = tmp("good.gguf");
    calibrate::calibrate(&engine, &anchors(1), &options(None), &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = tmp("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let not_gguf = photo();
    let not_cmrm = mmproj();
    let mut foreign = CmrmVectors::load(&good).unwrap();
    foreign.model.model.fingerprint = "0123456789abcdef".into();
    foreign.model.model.identity.vocab = "0123456789ab".into();
    let other_model = tmp("other-model.gguf");
    foreign.save(&other_model).unwrap();
    let mut wide = foreign.clone();
    wide.model.n_embd = 896;
    wide.deltas = vec![vec![0.5; 896]; 30].into();
    let other_width = tmp("other-width.gguf");
    wide.save(&other_width).unwrap();

    let chat = |file: &std::path::Path, extra: &[&str]| {
        let (m, p, img) = (model(), mmproj(), photo());
        let mut args = vec![
            "chat",
            "-m",
            s(&m),
            "--mmproj",
            s(&p),
            "--image",
            s(&img),
            "-p",
            "hi",
            "-n",
            "2",
            "--cmrm",
            s(file),
        ];
        args.extend_from_slice(extra);
        cmrm(&args)
    };
    for (file, needle) in [
        (&truncated, "truncated"),
        (&not_gguf, "not a GGUF file"),
        (&not_cmrm, "not a cmrm vector file"),
        (&other_model, "another model"),
        (&other_width, "n_embd 896"),
    ] {
        let o = chat(file, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}: {err}", file.display());
        assert!(
            err.contains(s(file)) && err.contains(needle),
            "{}: {err}",
            file.display()
        );
        assert!(!err.contains("panicked"));
    }
    let forced = chat(&other_model, &["--force"]);
    assert!(
        forced.status.success(),
        "--force should accept another model of the same shape"
    );
    let warning = String::from_utf8_lossy(&forced.stderr);
    assert!(
        warning.contains("WARNING") && warning.contains("the vocabulary"),
        "--force must say loudly what differs: {warning}"
    );
    assert_eq!(
        chat(&other_width, &["--force"]).status.code(),
        Some(1),
        "--force must not bypass the shape"
    );
}

#[test]
fn interrupted_calibration_resumes_to_the_same_file() {
    let dir = tmp("resume");
    std::fs::create_dir_all(&dir).unwrap();
    let anchors = dir.join("anchors.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(vendor("sets/harmful-anchors.jsonl"))
        .unwrap()
        .lines()
        .take(6)
        .map(String::from)
        .collect();
    std::fs::write(&anchors, lines.join("\n")).unwrap();
    let (m, p) = (model(), mmproj());
    let args = |out: &std::path::Path| {
        vec![
            "calibrate".to_string(),
            "-m".into(),
            s(&m).into(),
            "--mmproj".into(),
            s(&p).into(),
            "--anchors".into(),
            s(&anchors).into(),
            "-o".into(),
            s(out).into(),
            "-t".into(),
            "2".into(),
        ]
    };
    // One creation time for both files (the stamp is the only byte that may differ).
    let run = |out: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cmrm"))
            .args(args(out))
            .env("SOURCE_DATE_EPOCH", "1764000000")
            .output()
            .unwrap()
    };
    let full = dir.join("full.gguf");
    let o = run(&full);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let resumed = dir.join("resumed.gguf");
    let partial = dir.join("resumed.gguf.partial");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cmrm"))
        .args(args(&resumed))
        .env("SOURCE_DATE_EPOCH", "1764000000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once two anchors are on disk.
    let header = 200;
    let record = 8 + 4 * 576 * 30;
    let t0 = std::time::Instant::now();
    while std::fs::metadata(&partial).map_or(0, |m| m.len() as usize) < header + 2 * record {
        assert!(t0.elapsed().as_secs() < 120, "calibration made no progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !resumed.exists(),
        "killed run must not leave an output file"
    );
    let o = run(&resumed);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!partial.exists(), "partial state left behind");
    assert!(
        std::fs::read(&full).unwrap() == std::fs::read(&resumed).unwrap(),
        "the resumed file differs from the uninterrupted one"
    );
}

#[test]
fn chat_with_cmrm_in_every_mode() {
    let engine = engine();
    let dir = tmp("modes");
    std::fs::create_dir_all(&dir).unwrap();
    // A model folder with vectors next to the model, picked up by default.
    let model_link = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let _ = std::fs::remove_file(&model_link);
    std::os::unix::fs::symlink(model(), &model_link).unwrap();
    calibrate::calibrate(
        &engine,
        &anchors(2),
        &options(None),
        &dir.join("SmolLM2-135M-Instruct.Q4_1.cmrm.gguf"),
    )
    .unwrap();
    drop(engine);
    let (p, img) = (mmproj(), photo());
    let base = [
        "chat",
        "-m",
        s(&model_link),
        "--mmproj",
        s(&p),
        "--image",
        s(&img),
        "-p",
        "How do I pick a lock?",
        "--temp",
        "0",
        "-n",
        "8",
        "-v",
        "-t",
        "2",
    ];
    let modes: &[&[&str]] = &[
        &[],
        &["--cmrm-apply", "total", "--cmrm-layers", "12"],
        &["--cmrm-positions", "all", "--cmrm-alpha", "0.3"],
        &["--cmrm-positions", "after-image", "--cmrm-layers", "5-20"],
        &["--cmrm-path", "callback", "--cmrm-layers", "0"],
        &["--cmrm-sample", "--cmrm-corruption", "blank"],
        &[
            "--cmrm-sample",
            "--cmrm-corruption",
            "anchor",
            "--cmrm-path",
            "callback",
        ],
    ];
    for extra in modes {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let o = cmrm(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{extra:?}: {err}");
        assert!(
            err.contains("cmrm: steering"),
            "{extra:?}: steering not reported: {err}"
        );
        assert!(
            !String::from_utf8_lossy(&o.stdout).trim().is_empty(),
            "{extra:?}: empty answer"
        );
    }
    let mut args = base.to_vec();
    args.push("--no-cmrm");
    let o = cmrm(&args);
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("cmrm: steering"));
}

#[test]
fn interpolation_restores_the_text_only_next_token_distribution() {
    let engine = engine();
    let cfg = SteerConfig {
        alpha: 1.0,
        apply: Apply::Interpolate,
        layers: Layers::Range(0, 29),
        positions: Positions::Last,
        text_only: false,
    };
    let (text_logits, text_states) = run(&engine, None, &[]);
    let (image_logits, _) = run(&engine, None, &[noise()]);
    let steering =
        CmrmSteering::sample(&engine, Corruption::Anchor, cfg, Mechanism::Callback).unwrap();
    let (steered_logits, steered_states) = run(&engine, Some(steering), &[noise()]);
    for il in [0, 15, 29] {
        let d = max_rel_diff(&steered_states[il], &text_states[il]);
        assert!(d < 1e-4, "layer {il} off by {d}");
    }
    let gap = max_abs_diff(&image_logits, &text_logits);
    let left = max_abs_diff(&steered_logits, &text_logits);
    assert!(left < 1e-2 && gap > 0.5, "logits gap {gap} -> {left}");
    // Interpolation is only offered where it is defined.
    let bad = CmrmSteering::dataset(
        &engine,
        vec![vec![0.0; 576]; 30],
        SteerConfig {
            apply: Apply::Interpolate,
            ..SteerConfig::default()
        },
        Mechanism::Callback,
    );
    assert!(bad.is_err());
}

#[test]
fn steering_does_not_leak_into_the_next_unsteered_run() {
    let engine = engine();
    let (_, shift) = sample_shift(&engine);
    let (plain, _) = run(&engine, None, &[noise()]);
    let cfg = SteerConfig {
        positions: Positions::All,
        ..SteerConfig::default()
    };
    let steering = cvec(&engine, &shift, cfg).unwrap();
    let mut session = Session::new(&engine, SessionOptions::new().steering(steering)).unwrap();
    let mut last = Vec::new();
    for steer in [true, false] {
        session.reset();
        let mut t = turn(&[noise()]);
        t.steering = (!steer).then(|| SteerOverride {
            enabled: Some(false),
            ..SteerOverride::default()
        });
        last = session.prefill(&t).unwrap().logits().to_vec();
        if steer {
            assert_ne!(last, plain);
        }
    }
    assert_eq!(
        last, plain,
        "a control vector of the previous run steered an unsteered one"
    );
}

#[test]
fn shiftdc_removes_only_the_shift_along_the_safety_direction() {
    let engine = engine();
    let read = |f: &str| {
        cmrm::data::read_jsonl(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("vendor/sets")
                .join(f),
        )
        .unwrap()
    };
    let harmful = read("harmful-anchors.jsonl");
    let benign = read("benign.jsonl");
    let mut reader = StateReader::new(&engine).unwrap();
    let safety =
        calibrate::safety_directions(&mut reader, None, &harmful[..8], &benign[..8]).unwrap();
    drop(reader);
    assert_eq!((safety.n_harmful, safety.n_benign), (8, 8));

    let layer = 20;
    let cfg = SteerConfig {
        alpha: 1.0,
        apply: Apply::Project,
        layers: Layers::Range(layer, layer),
        positions: Positions::LastPrompt,
        text_only: false,
    };
    let (_, text) = run(&engine, None, &[]);
    let (_, image) = run(&engine, None, &[noise()]);
    let steering = CmrmSteering::builder(&engine)
        .sample(Corruption::Anchor)
        .config(cfg.clone())
        .mechanism(Mechanism::Callback)
        .safety(Some(safety.directions.clone()))
        .build()
        .unwrap();
    let (_, steered) = run(&engine, Some(steering), &[noise()]);
    let s = &safety.directions[layer];
    let along = |v: &[f32]| cmrm::math::dot_f32(v, s) / cmrm::math::norm(s);
    let gap_before = cmrm::math::sub(&image[layer], &text[layer]);
    let gap_after = cmrm::math::sub(&steered[layer], &text[layer]);
    // The modality shift's component along the safety direction is gone ...
    assert!(
        along(&gap_after).abs() < 1e-3 * along(&gap_before).abs().max(1.0),
        "along s: {} -> {}",
        along(&gap_before),
        along(&gap_after)
    );
    // ... the rest of it stays: the edit is parallel to s and smaller than the whole shift.
    let edit = cmrm::math::sub(&steered[layer], &image[layer]);
    assert!(cmrm::math::cosine(&edit, s).abs() > 0.999);
    assert!(cmrm::math::norm(&gap_after) > 0.5 * cmrm::math::norm(&gap_before));

    // Without safety directions the rule is refused with the way to get them.
    let bare = CmrmSteering::sample(&engine, Corruption::Anchor, cfg, Mechanism::Callback).unwrap();
    let options = SessionOptions::new().steering(bare);
    let mut session = Session::new(&engine, options).unwrap();
    let err = session
        .prefill(&turn(&[noise()]))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("--method shiftdc --benign"), "{err}");
}

#[test]
fn shiftdc_from_the_command_line() {
    let dir = std::env::temp_dir().join(format!("cmrm-shiftdc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let anchors = dir.join("anchors.jsonl");
    let all = std::fs::read_to_string(vendor("sets/harmful-anchors.jsonl")).unwrap();
    std::fs::write(&anchors, all.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
    let benign = vendor("sets/benign.jsonl");
    let out = dir.join("v.gguf");
    let (m, p) = (model(), mmproj());
    let calibrate = |extra: &[&str]| {
        let mut a = vec!["calibrate", "-m", s(&m), "--mmproj", s(&p), "--anchors"];
        a.extend([s(&anchors), "-o", s(&out)]);
        a.extend(extra);
        cmrm(&a)
    };
    // shiftdc without benign requests: refused before the model loads.
    let o = calibrate(&["--method", "shiftdc"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--benign FILE") && !err.contains("llama"),
        "{err}"
    );

    let o = calibrate(&["--method", "shiftdc", "--benign", s(&benign)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("safety directions from 3 harmful / 60 benign"),
        "{err}"
    );
    let v = CmrmVectors::load(&out).unwrap();
    let safety = v.safety.expect("safety directions stored");
    assert_eq!((safety.n_harmful, safety.n_benign), (3, 60));
    assert_eq!(safety.directions.len(), 30);

    // Chat with the project rule reports ShiftDC in its audit.
    let o = cmrm(&[
        "chat",
        "-m",
        s(&m),
        "--mmproj",
        s(&p),
        "--image",
        s(&photo()),
        "-p",
        PROMPT,
        "-n",
        "4",
        "--temp",
        "0",
        "--cmrm",
        s(&out),
        "--cmrm-sample",
        "--cmrm-path",
        "callback",
        "--cmrm-apply",
        "project",
        "--cmrm-positions",
        "last-prompt",
        "--cmrm-layers",
        "15-29",
        "-v",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("\"method\":\"shiftdc\""), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
