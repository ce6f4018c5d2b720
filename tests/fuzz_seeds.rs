//! Issue "robustness": every fuzz seed and every input the fuzzers ever found (tests/fuzz/corpus,
//! tests/fuzz/regressions) goes through the same readers as in the fuzz targets, in every
//! `cargo test`: no panic, and the broken ones are refused with a message that names the file.

use std::path::{Path, PathBuf};

use cmrm::vectors::{CmrmVectors, FileId, ModelId};
use cmrm::{data, gguf, media};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            out.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

#[test]
fn vector_file_seeds() {
    let model = ModelId {
        n_embd: 4,
        n_layer: 3,
        arch: "llama".into(),
        model: FileId {
            fingerprint: "0123456789abcdef".into(),
            ..FileId::default()
        },
        mmproj: None,
    };
    for p in inputs("vector_file") {
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        match CmrmVectors::parse(&bytes, &p) {
            Ok(v) => {
                assert!(name.starts_with("valid"), "{name} was accepted");
                v.check_model(&p, &model, false).unwrap();
                if name == "valid-with-provenance.gguf" {
                    let a = v.provenance.anchors.as_ref().unwrap();
                    assert_eq!((a.name.as_str(), a.size), ("anchors.jsonl", 118));
                    assert_eq!(v.model.model.quantization, "Q4_1");
                    assert_eq!(v.model.model.identity.vocab, "0b0b0b0b0b0b");
                    assert_eq!(v.provenance.system_prompt.as_deref(), Some("Be careful."));
                }
            }
            Err(e) => {
                assert!(!name.starts_with("valid"), "{name}: {e}");
                assert!(e.to_string().contains(&*p.to_string_lossy()), "{name}: {e}");
            }
        }
    }
}

#[test]
fn model_header_seeds() {
    for p in inputs("model_header") {
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        match gguf::parse_header(&bytes) {
            Ok(h) => {
                assert!(name.starts_with("valid"), "{name} was accepted");
                assert_eq!(gguf::projector_width_of(&h), Some(2));
                assert_eq!(cmrm::quant::describe(&h), "Q4_1");
                let read = |t: &gguf::TensorInfo| gguf::f32_tensor_in(&bytes, &h, t);
                let id = cmrm::identity::Identity::of_model(&h, &read).unwrap();
                assert!(!id.weights.is_empty(), "output_norm is a 1-D F32 tensor");
                assert!(cmrm::identity::Identity::of_projector(&h, &read).is_ok());
            }
            Err(e) => assert!(!name.starts_with("valid"), "{name}: {e}"),
        }
    }
}

#[test]
fn jsonl_seeds() {
    for p in inputs("jsonl") {
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        match data::parse_jsonl(&bytes, &p) {
            Ok(items) => assert!(
                name.starts_with("valid") || name.starts_with("torn"),
                "{name} was accepted: {items:?}"
            ),
            Err(e) => {
                assert!(!name.starts_with("valid"), "{name}: {e}");
                assert!(
                    e.to_string().starts_with(&*p.to_string_lossy()),
                    "{name}: {e}"
                );
            }
        }
    }
}

#[test]
fn image_seeds() {
    for p in inputs("image") {
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let decoded = match std::str::from_utf8(&bytes) {
            Ok(text) if text.starts_with("data:") => {
                media::decode_data_uri(text).and_then(|b| media::decode(&b, "data URI").map(|_| ()))
            }
            _ => media::Image::decode(bytes, &name).map(|_| ()),
        };
        assert_eq!(
            decoded.is_ok(),
            name.starts_with("valid") || name == "data-uri.txt",
            "{name}: {decoded:?}"
        );
    }
}

#[test]
fn chat_request_seeds() {
    let limits = cmrm::serve::Limits {
        max_image_bytes: 1 << 20,
        max_image_pixels: 1 << 22,
        max_images: 4,
        max_tokens: 256,
        default_max_tokens: None,
        media_path: None,
        media_fetch: false,
    };
    for p in inputs("chat_request") {
        let bytes = std::fs::read(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let parsed = cmrm::serve::parse(
            &bytes,
            &cmrm::SamplingParams::default(),
            &cmrm::settings::SteerOverride::default(),
            &limits,
        );
        match parsed {
            Ok(r) => {
                assert!(name.starts_with("valid"), "{name} was accepted");
                assert!(r.max_tokens <= limits.max_tokens, "{name}");
            }
            Err(e) => {
                assert!(!name.starts_with("valid"), "{name}: {}", e.message);
                assert_eq!(e.status, 400, "{name}: {}", e.message);
            }
        }
    }
}
