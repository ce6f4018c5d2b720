//! Issue "vector files that travel": one vector file for every quantization of a model (an
//! identity that survives llama.cpp's quantizer), refusal of another model or fine-tune,
//! discovery in a folder of quantizations, provenance in the file, `cmrm inspect --json` and
//! `cmrm card`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cmrm::vectors::{CmrmVectors, ModelId};
use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh path under this test binary's own temporary folder.
fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cmrm-distribution-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A folder holding the fixture model as `smol-Q4_1.gguf`, its Q8_0 made by `cmrm quantize`
/// and vectors calibrated on Q4_1 (2 anchors, at a fixed `SOURCE_DATE_EPOCH`).
struct Repo {
    dir: PathBuf,
    q4: PathBuf,
    q8: PathBuf,
    vectors: PathBuf,
}

fn repo() -> &'static Repo {
    static REPO: OnceLock<Repo> = OnceLock::new();
    REPO.get_or_init(|| {
        let dir = tmp("repo");
        std::fs::create_dir_all(&dir).unwrap();
        let q4 = dir.join("smol-Q4_1.gguf");
        std::fs::copy(model(), &q4).unwrap();
        let q8 = dir.join("smol-Q8_0.gguf");
        let o = cmrm(&["quantize", "--allow-requantize", s(&q4), s(&q8), "Q8_0"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let vectors = dir.join("smollm2.cmrm.gguf");
        let anchors = vendor("sets/harmful-anchors.jsonl");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_cmrm"))
            .env("SOURCE_DATE_EPOCH", "1764000000")
            .args([
                "calibrate",
                "-m",
                s(&q4),
                "--mmproj",
                s(&mmproj()),
                "--anchors",
                s(&anchors),
                "--limit",
                "2",
                "--system-prompt",
                "Be careful.",
                "-o",
                s(&vectors),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        Repo {
            dir,
            q4,
            q8,
            vectors,
        }
    })
}

fn chat(model: &Path, extra: &[&str]) -> std::process::Output {
    let (mm, img) = (mmproj(), photo());
    let mut args = vec![
        "chat",
        "-m",
        s(model),
        "--mmproj",
        s(&mm),
        "--image",
        s(&img),
        "-p",
        "How do I pick a lock?",
        "-n",
        "2",
    ];
    args.extend_from_slice(extra);
    cmrm(&args)
}

/// A copy of the Q4_1 model whose output norm differs by one value: the same architecture,
/// vocabulary and tensor shapes, other weights (what a fine-tune looks like to cmrm).
fn fine_tune(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("smol-finetune-Q4_1.gguf");
    if !path.exists() {
        let src = model();
        let h = cmrm::gguf::read_header(&src).unwrap();
        let t = h.tensor("output_norm.weight").unwrap();
        let mut bytes = std::fs::read(&src).unwrap();
        let at = (h.data_offset + t.offset) as usize;
        let v = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) + 0.25;
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        std::fs::write(&path, bytes).unwrap();
    }
    path
}

#[test]
fn quantizations_share_an_identity_and_other_models_do_not() {
    let r = repo();
    let q4 = ModelId::of_files(&r.q4, Some(&mmproj())).unwrap();
    let q8 = ModelId::of_files(&r.q8, Some(&mmproj())).unwrap();
    assert_eq!(q4.model.quantization, "Q4_1");
    assert_eq!(q8.model.quantization, "Q8_0");
    assert_ne!(q4.model.fingerprint, q8.model.fingerprint);
    assert_eq!(q4.model.identity, q8.model.identity);
    assert!(!q4.model.identity.weights.is_empty());

    let tuned = ModelId::of_files(&fine_tune(&r.dir), None).unwrap();
    let diff = q4.model.identity.differences(&tuned.model.identity);
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(diff[0].contains("fine-tune"));

    let v = CmrmVectors::load(&r.vectors).unwrap();
    assert_eq!(v.model.model.identity, q4.model.identity);
    let fit = v.check_model(&r.vectors, &q8, false).unwrap();
    let line = fit.message(&r.vectors).unwrap();
    assert!(
        line.contains("measured on Q4_1 (smol-Q4_1.gguf), running Q8_0 (smol-Q8_0.gguf)"),
        "{line}"
    );
    assert!(v
        .check_model(&r.vectors, &q4, false)
        .unwrap()
        .message(&r.vectors)
        .is_none());
    let e = v
        .check_model(&r.vectors, &tuned, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("another fine-tune"), "{e}");
}

#[test]
fn one_vector_file_serves_another_quantization_and_refuses_a_fine_tune() {
    let r = repo();
    let v = s(&r.vectors);
    let o = chat(&r.q8, &["--cmrm", v]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("measured on Q4_1"),
        "one line says what: {err}"
    );
    assert!(!err.contains("WARNING"), "{err}");

    let tuned = fine_tune(&tmp("tuned"));
    let o = chat(&tuned, &["--cmrm", v]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(v) && err.contains("another fine-tune"),
        "{err}"
    );
    let o = chat(&tuned, &["--cmrm", v, "--force"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("WARNING: --force"), "{err}");
}

#[test]
fn discovery_finds_the_one_file_made_for_the_model_in_its_folder() {
    let r = repo();
    // The vector file is named after neither model file: found by identity for both.
    for m in [&r.q4, &r.q8] {
        let o = chat(m, &["-v"]);
        let err = stderr(&o);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains(&format!(
                "cmrm: vectors {} (the only *.cmrm.gguf in",
                r.vectors.display()
            )),
            "{err}"
        );
        assert!(err.contains("\"applied\":true"), "{err}");
    }

    // A folder with another model's vectors and a second matching file.
    let dir = tmp("crowded");
    std::fs::create_dir_all(&dir).unwrap();
    let q8 = dir.join("smol-Q8_0.gguf");
    std::fs::copy(&r.q8, &q8).unwrap();
    let mut foreign = CmrmVectors::load(&r.vectors).unwrap();
    foreign.model.model.identity.vocab = "0123456789ab".into();
    foreign.save(&dir.join("other.cmrm.gguf")).unwrap();
    let o = chat(&q8, &["-v"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("passed over") && err.contains("the vocabulary"),
        "{err}"
    );
    assert!(
        !err.contains("\"applied\":true"),
        "nothing fits: plain inference: {err}"
    );

    std::fs::copy(&r.vectors, dir.join("a.cmrm.gguf")).unwrap();
    std::fs::copy(&r.vectors, dir.join("b.cmrm.gguf")).unwrap();
    let o = chat(&q8, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("several vector files")
            && err.contains("a.cmrm.gguf")
            && err.contains("b.cmrm.gguf")
            && err.contains("--cmrm FILE"),
        "{err}"
    );
    // The file named after the model comes first; --cmrm before everything.
    std::fs::copy(&r.vectors, dir.join("smol-Q8_0.cmrm.gguf")).unwrap();
    let o = chat(&q8, &["-v"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("smol-Q8_0.cmrm.gguf (named after the model file)"),
        "{err}"
    );
    let o = chat(&q8, &["-v", "--cmrm", s(&dir.join("a.cmrm.gguf"))]);
    assert!(
        stderr(&o).contains("a.cmrm.gguf (given with --cmrm)"),
        "{}",
        stderr(&o)
    );
    // eval needs a vector file and says where it looked.
    let lone = tmp("lone");
    std::fs::create_dir_all(&lone).unwrap();
    let m = lone.join("m.gguf");
    std::fs::copy(&r.q8, &m).unwrap();
    std::fs::copy(dir.join("other.cmrm.gguf"), lone.join("other.cmrm.gguf")).unwrap();
    let o = cmrm(&[
        "eval",
        "fidelity",
        "-m",
        s(&m),
        "--mmproj",
        s(&mmproj()),
        "--data",
        s(&vendor("sets/harmful-eval.jsonl")),
        "--limit",
        "1",
        "--out",
        s(&lone.join("out")),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no vector file") && err.contains("passed over"),
        "{err}"
    );
}

#[test]
fn provenance_is_recorded_and_shown() {
    let r = repo();
    let v = CmrmVectors::load(&r.vectors).unwrap();
    let p = &v.provenance;
    assert_eq!(p.cmrm_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(p.created, "2025-11-24T16:00:00Z", "SOURCE_DATE_EPOCH");
    assert_eq!(p.system_prompt.as_deref(), Some("Be careful."));
    let a = p.anchors.as_ref().unwrap();
    assert_eq!(a.name, "harmful-anchors.jsonl");
    let set = vendor("sets/harmful-anchors.jsonl");
    assert_eq!(a.size, cmrm::data::read_jsonl(&set).unwrap().len());
    let sum = std::process::Command::new("sha256sum")
        .arg(&set)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sum.stdout).starts_with(&a.sha256));
    assert_eq!(v.n_anchors, 2);
    assert_eq!(v.model.model.file, "smol-Q4_1.gguf");
    assert_eq!(
        v.model.mmproj.as_ref().unwrap().file,
        "mmproj-smollm2-synthetic.gguf"
    );

    let o = cmrm(&["inspect", s(&r.vectors), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["model"]["text_model"]["quantization"], "Q4_1");
    assert_eq!(j["provenance"]["anchor_set"]["sha256"], a.sha256.as_str());
    assert_eq!(j["provenance"]["created"], "2025-11-24T16:00:00Z");
    assert_eq!(j["layers"].as_array().unwrap().len(), 30);
    assert!(j["layers"][0]["direction_norm"].is_null());
    let text = String::from_utf8(cmrm(&["inspect", s(&r.vectors)]).stdout).unwrap();
    assert!(
        text.contains("measured on  smol-Q4_1.gguf (Q4_1)"),
        "{text}"
    );
    assert!(
        text.contains("harmful-anchors.jsonl (118 items, sha256"),
        "{text}"
    );
}

#[test]
fn a_card_says_what_the_file_is_and_shows_measured_numbers() {
    let r = repo();
    let out = tmp("card");
    std::fs::create_dir_all(&out).unwrap();
    let summary = "| condition | n | unsafe rate |\n|---|---:|---:|\n| image | 10 | 60.0% |\n";
    std::fs::write(out.join("safety-summary.md"), summary).unwrap();
    let card = out.join("README-cmrm.md");
    let o = cmrm(&[
        "card",
        s(&r.vectors),
        "--eval-summary",
        s(&out),
        "-o",
        s(&card),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&card).unwrap();
    for needle in [
        "## CMRM safety vectors: `smollm2.cmrm.gguf`",
        "Measured on `smol-Q4_1.gguf` (Q4_1)",
        "every\nquantization",
        "cmrm chat -m smol-Q4_1.gguf --mmproj mmproj-smollm2-synthetic.gguf",
        "cmrm serve",
        "--control-vector-scaled smollm2.cmrm.gguf:0.5",
        "never at layer 0",
        "| image | 10 | 60.0% |",
        "sha256 `",
    ] {
        assert!(
            text.replace('\n', " ").contains(&needle.replace('\n', " ")),
            "card lacks {needle:?}:\n{text}"
        );
    }
    let empty = tmp("card-empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = cmrm(&["card", s(&r.vectors), "--eval-summary", s(&empty)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no summary found"), "{}", stderr(&o));
}

#[test]
fn quantize_refuses_what_it_cannot_do_well_and_leaves_nothing_behind() {
    let dir = tmp("quantize");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.gguf");
    let o = cmrm(&["quantize", s(&model()), s(&out), "Q8_0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--allow-requantize"), "{}", stderr(&o));
    let o = cmrm(&["quantize", s(&model()), s(&out), "IQ2_XXS"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("importance matrix"), "{}", stderr(&o));
    let o = cmrm(&["quantize", s(&model()), s(&out), "Q9_9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Q4_K_M"), "{}", stderr(&o));
    let o = cmrm(&["quantize", s(&photo()), s(&out), "Q8_0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not a GGUF file"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written"
    );
}
