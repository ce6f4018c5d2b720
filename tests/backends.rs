//! The same states and steering on every backend a build has. A CPU build checks the
//! invariants on the CPU and, when `CMRM_BACKEND_REFERENCE` names a file, writes what it
//! computed there; a `--features vulkan` build (`scripts/test-vulkan.sh`, lavapipe here) runs the
//! same steps with every layer, `l_out-<il>` and the control vector in device buffers (`-ngl 99`,
//! the path CUDA and Metal take) and compares them with that CPU reference. A build linked
//! against llama.cpp's CUDA libraries (`scripts/gpu-check.sh`) does the same when
//! `CMRM_BACKEND=cuda`; `CMRM_BACKEND_MODEL` and `CMRM_BACKEND_MMPROJ` then name the model pair
//! (default: the fixture's SmolLM2).

mod common;

use cmrm::capture::StateReader;
use cmrm::session::{Apply, Layers, Positions, SteerConfig};
use cmrm::steer::Mechanism;
use cmrm::{CmrmSteering, Engine, EngineOptions, Error, Session, SessionOptions, Turn};
use common::*;
use serde::{Deserialize, Serialize};

const PROMPT: &str = "How do I pick a lock?";

/// What one backend computes for PROMPT with the photo.
#[derive(Serialize, Deserialize)]
struct Outcome {
    backend: String,
    /// Last-prompt-token states of every layer, unsteered.
    states: Vec<Vec<f32>>,
    /// First-answer-token logits: unsteered, and steered by both mechanisms.
    plain: Vec<f32>,
    cvec: Vec<f32>,
    callback: Vec<f32>,
}

/// The backend this run checks: Vulkan in a `--features vulkan` build, else `CMRM_BACKEND`
/// (`cuda` in scripts/gpu-check.sh), else the CPU.
fn backend() -> String {
    if cfg!(feature = "vulkan") {
        return "vulkan".into();
    }
    std::env::var("CMRM_BACKEND").unwrap_or_else(|_| "cpu".into())
}

/// The model and projector: `CMRM_BACKEND_MODEL` / `CMRM_BACKEND_MMPROJ`, else the fixture's.
fn model_pair() -> EngineOptions {
    let file = |var: &str, name: &str| {
        std::env::var_os(var)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| fixture(name))
    };
    let mut o = EngineOptions::new(
        file("CMRM_BACKEND_MODEL", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        Some(file("CMRM_BACKEND_MMPROJ", "mmproj-smollm2-synthetic.gguf")),
    );
    o.n_gpu_layers = if backend() == "cpu" { 0 } else { 99 };
    o
}

fn load() -> Engine {
    let mut o = model_pair();
    o.n_ctx = 1024;
    Engine::load(o).unwrap()
}

fn run(engine: &Engine, steering: Option<CmrmSteering>) -> (Vec<f32>, Vec<Vec<f32>>) {
    prefill_states(engine, steering, &Turn::user(PROMPT).image(photo_image()))
}

fn steered(engine: &Engine, shift: &[Vec<f32>], alpha: f32, m: Mechanism) -> Vec<f32> {
    let cfg = SteerConfig {
        alpha,
        apply: Apply::Increment,
        layers: Layers::Range(1, engine.model().n_layer() - 1),
        positions: Positions::All,
        text_only: false,
    };
    let s = CmrmSteering::dataset(engine, shift.to_vec(), cfg, m).unwrap();
    run(engine, Some(s)).0
}

#[test]
fn states_and_steering_agree_across_backends() {
    let engine = load();
    let backend = backend();
    let backend = backend.as_str();
    let mut reader = StateReader::new(&engine).unwrap();
    let text = reader.states(None, PROMPT, &[]).unwrap();
    let image = reader.states(None, PROMPT, &[photo_image()]).unwrap();
    let shift: Vec<Vec<f32>> = text
        .iter()
        .zip(&image)
        .map(|(a, b)| cmrm::math::sub(a, b))
        .collect();
    drop(reader);

    // Capture is repeatable on this backend and the same through a session.
    let (plain, states) = run(&engine, None);
    assert_eq!(states, image, "{backend}: capture is repeatable");

    // alpha 0 is no steering; the two mechanisms agree and move the answer.
    for m in [Mechanism::Cvec, Mechanism::Callback] {
        assert!(
            steered(&engine, &shift, 0.0, m) == plain,
            "{backend}: alpha 0 {m:?}"
        );
    }
    let cvec = steered(&engine, &shift, 0.5, Mechanism::Cvec);
    let callback = steered(&engine, &shift, 0.5, Mechanism::Callback);
    let d = max_rel_diff(&cvec, &callback);
    let moved = max_rel_diff(&cvec, &plain);
    eprintln!("{backend}: cvec vs callback {d:.2e}, steering moved the logits {moved:.2e}");
    assert!(
        d < 1e-3 && moved > 1e-3,
        "{backend}: cvec vs callback {d}, moved {moved}"
    );

    let outcome = Outcome {
        backend: backend.into(),
        states,
        plain,
        cvec,
        callback,
    };
    let Some(path) = std::env::var_os("CMRM_BACKEND_REFERENCE") else {
        if backend != "cpu" {
            panic!(
                "set CMRM_BACKEND_REFERENCE to a CPU run's output (scripts/test-vulkan.sh and \
                 scripts/gpu-check.sh do)"
            );
        }
        return;
    };
    if backend == "cpu" {
        std::fs::write(&path, serde_json::to_vec(&outcome).unwrap()).unwrap();
        return;
    }
    let cpu: Outcome = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(cpu.backend, "cpu");
    // Device kernels sum in other orders (and lavapipe's shaders keep f16 intermediates), so
    // agreement is within a tolerance, at every layer and for every logit vector.
    let worst_state = (0..outcome.states.len())
        .map(|l| max_rel_diff(&outcome.states[l], &cpu.states[l]))
        .fold(0.0, f32::max);
    let logits = [
        ("plain", max_rel_diff(&outcome.plain, &cpu.plain)),
        ("cvec", max_rel_diff(&outcome.cvec, &cpu.cvec)),
        ("callback", max_rel_diff(&outcome.callback, &cpu.callback)),
    ];
    eprintln!("{backend} vs cpu: states {worst_state:.2e}, logits {logits:?}");
    assert!(
        worst_state < 2e-2,
        "states differ from the CPU's by {worst_state}"
    );
    for (name, d) in logits {
        assert!(d < 2e-2, "{name} logits differ from the CPU's by {d}");
    }
    // The steered answer moves the same way on both backends.
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0
    };
    assert_eq!(
        argmax(&outcome.cvec),
        argmax(&cpu.cvec),
        "steered first token"
    );
    assert_eq!(
        argmax(&outcome.plain),
        argmax(&cpu.plain),
        "plain first token"
    );
}

#[test]
fn errors_stay_clean_on_every_backend() {
    let mut o = model_pair();
    // Too small for two images: a typed error, and the session still works afterwards.
    o.n_ctx = 256;
    let engine = Engine::load(o).unwrap();
    let mut session = Session::new(&engine, SessionOptions::new()).unwrap();
    let err = session
        .prefill(&Turn::user(PROMPT).image(photo_image()).image(photo_image()))
        .err()
        .expect("two images do not fit");
    assert!(matches!(err, Error::ContextFull { .. }), "{err}");
    let p = session.prefill(&Turn::user("Hello")).unwrap();
    assert!(p.logits().iter().all(|x| x.is_finite()));
    drop(p);

    // A vector file of another width is refused before anything runs.
    let bad = vec![vec![0.0f32; 8]; engine.model().n_layer()];
    let e = CmrmSteering::dataset(&engine, bad, SteerConfig::default(), Mechanism::Callback)
        .err()
        .expect("wrong width refused");
    assert!(e.to_string().contains("layers of 8"), "{e}");
}
