//! Shared test set-up: the fixture (built by scripts/fixture.sh when missing), one engine per
//! test binary, and a helper that runs the `cmrm` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, Once, OnceLock};

use cmrm::{Engine, EngineOptions};

static FIXTURE: Once = Once::new();

/// The fixture folder, built on first use.
pub fn fixture_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("CMRM_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("fixture"));
    FIXTURE.call_once(|| {
        // Idempotent and quick when everything is in place; --qwen: the Qwen2.5 backbone and
        // its qwen2vl rewrite (M-RoPE) are part of the tested families.
        let ok = Command::new("bash")
            .arg(root.join("scripts/fixture.sh"))
            .arg("--qwen")
            .env("CMRM_FIXTURE_DIR", &dir)
            .status()
            .expect("run scripts/fixture.sh")
            .success();
        assert!(ok, "scripts/fixture.sh failed");
    });
    dir
}

/// A fixture file.
pub fn fixture(name: &str) -> PathBuf {
    let p = fixture_dir().join(name);
    assert!(p.exists(), "fixture file missing: {}", p.display());
    p
}

/// A vendored file.
pub fn vendor(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("vendor")
        .join(rel)
}

/// The SmolLM2 text model.
pub fn model() -> PathBuf {
    fixture("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Its synthetic projector.
pub fn mmproj() -> PathBuf {
    fixture("mmproj-smollm2-synthetic.gguf")
}

/// A real photograph.
pub fn photo() -> PathBuf {
    vendor("images/astronaut.jpg")
}

/// Options for the fixture VLM with a small context.
pub fn options() -> EngineOptions {
    let mut o = EngineOptions::new(model(), Some(mmproj()));
    o.n_ctx = 2048;
    o
}

/// One engine per test binary, shared by its tests one at a time.
pub fn engine() -> MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Mutex::new(Engine::load(options()).expect("load fixture engine")))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The `cmrm` binary cargo built for this test run. Absent in a library-only build
/// (`--no-default-features`, as scripts/test-vulkan.sh builds tests/backends.rs), where only
/// the tests that run the binary fail, with this message.
pub fn bin() -> &'static str {
    match option_env!("CARGO_BIN_EXE_cmrm") {
        Some(path) => path,
        None => panic!("this test runs the cmrm binary: build with the default features (cli)"),
    }
}

/// Runs the cmrm binary with `args`.
pub fn cmrm(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("run cmrm")
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A fresh, empty temporary folder for one test (`<group>-<pid>-<name>`).
pub fn fresh_dir(group: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cmrm-{group}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first `n` lines of a vendored set, written to `dir` (image paths made absolute).
pub fn subset_in(set: &str, n: usize, dir: &Path) -> PathBuf {
    let items = cmrm::data::read_jsonl(&vendor(&format!("sets/{set}"))).unwrap();
    let lines: Vec<String> = items
        .iter()
        .take(n)
        .map(|i| serde_json::to_string(i).unwrap())
        .collect();
    let path = dir.join(set);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// The fixture model flags of the command-line tests.
pub fn model_args() -> Vec<String> {
    [
        "-m",
        s(&model()),
        "--mmproj",
        s(&mmproj()),
        "-t",
        "2",
        "-c",
        "1024",
    ]
    .map(String::from)
    .to_vec()
}

/// `cmrm chat` on the fixture and the photo, greedy: `prompt`, `n` tokens, then `extra`.
pub fn photo_chat_args(prompt: &str, n: u32, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["chat".to_string()];
    args.extend(model_args());
    let n = n.to_string();
    args.extend(
        [
            "--image",
            s(&photo()),
            "-p",
            prompt,
            "-n",
            &n,
            "--temp",
            "0",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// One creation time for every run, so that a rerun or a resumed file can equal another
/// byte for byte (the stamp is the only field that may differ).
pub const EPOCH: &str = "1764000000";

/// Runs the cmrm binary with `args` (at [`EPOCH`]), asserts success and returns its stdout.
pub fn run_ok(args: &[String]) -> String {
    let o = Command::new(bin())
        .args(args)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Largest difference of `a` from `b`.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Largest difference of `a` from `b`, relative to the norm of `b`.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    max_abs_diff(a, b) / b.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6)
}

/// The test photograph as an image.
pub fn photo_image() -> cmrm::media::Image {
    cmrm::media::load(photo().to_str().unwrap()).unwrap().into()
}

/// Prefills `turn` on a fresh session steered by `steering`: the first answer token's logits
/// and the last prompt token's state at every layer.
pub fn prefill_states(
    engine: &Engine,
    steering: Option<cmrm::CmrmSteering>,
    turn: &cmrm::Turn,
) -> (Vec<f32>, Vec<Vec<f32>>) {
    use cmrm::capture::{shared, LayerCapture};
    let capture = LayerCapture::all_layers(engine.model().n_layer());
    let options = cmrm::SessionOptions::new()
        .boxed_steering(steering.map(|s| Box::new(s) as _))
        .observer(shared(&capture));
    let mut session = cmrm::Session::new(engine, options).unwrap();
    let prefilled = session.prefill(turn).unwrap();
    let logits = prefilled.logits().to_vec();
    drop(prefilled);
    let states = capture.lock().unwrap().all_states().unwrap();
    (logits, states.into_rows())
}
