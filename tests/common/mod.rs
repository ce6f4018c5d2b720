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

/// Runs the cmrm binary with `args`.
pub fn cmrm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmrm"))
        .args(args)
        .output()
        .expect("run cmrm")
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
