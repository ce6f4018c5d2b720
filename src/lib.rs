//! cmrm: Cross-Modality Representation Manipulation for quantized vision-language models on
//! llama.cpp.
//!
//! A VLM's safety alignment lives in its language backbone, trained on text. Images shift the
//! backbone's hidden states away from the text-only distribution and refusals collapse. CMRM
//! estimates that shift per layer and removes it at inference time. This crate loads GGUF VLMs
//! through llama.cpp's multimodal (mtmd) path ([`Engine`]), holds conversations whose turns are
//! steered ([`Session`], [`CmrmSteering`]), reads and edits the residual stream inside
//! llama.cpp's compute graph ([`ffi`]), and measures what CMRM restores ([`eval`]).
//!
//! A steered image turn:
//!
//! ```no_run
//! use cmrm::{CmrmSteering, CmrmVectors, Engine, EngineOptions, GenerateOptions, Session, SessionOptions, Turn};
//!
//! let engine = Engine::load(EngineOptions::new("model.gguf", Some("mmproj.gguf".into())))?;
//! // Made for this model or another quantization of it (`fit` says which).
//! let (vectors, fit) = CmrmVectors::load_for("model.cmrm.gguf".as_ref(), &engine, false)?;
//! let steering = CmrmSteering::from_vectors(&engine, &vectors)?;
//! let mut session = Session::new(&engine, SessionOptions::new().steering(steering))?;
//! let turn = Turn::user("What is in this picture?").image(cmrm::media::load("photo.jpg")?);
//! let answer = session.send(&turn, &GenerateOptions::greedy(64), &mut |piece| {
//!     print!("{piece}");
//!     true
//! })?;
//! println!("\nsteering: {:?}", answer.steering);
//! # Ok::<(), cmrm::Error>(())
//! ```
//!
//! Layers, each using only the ones below it: the command line and [`serve`]; [`eval`],
//! [`calibrate`], [`report`] and [`plot`]; [`steer`], [`capture`] and [`vectors`]; [`session`];
//! [`engine`], [`template`] and [`tools`]; [`ffi`]; and the leaves [`error`], [`math`], [`atomic`],
//! [`media`], [`gguf`], [`identity`], [`layer_vectors`], [`quant`], [`clock`], [`data`], [`settings`],
//! [`sampling`], [`progress`] and the FNV-1a hash. All `unsafe` code is in [`ffi`]. Without the
//! default `llama` feature the crate is the leaves and [`vectors`]: the file formats, without
//! llama.cpp. The `serve` feature adds [`serve`] (tokio, axum), the `cli` feature the `cmrm`
//! binary and its flag parser; `--no-default-features --features llama` is the library alone.

#![deny(unsafe_code)]

pub mod atomic;
#[cfg(feature = "llama")]
pub mod calibrate;
#[cfg(feature = "llama")]
pub mod capture;
pub mod clock;
pub mod data;
pub mod embeddings;
#[cfg(feature = "llama")]
pub mod engine;
pub mod error;
#[cfg(feature = "llama")]
pub mod eval;
#[cfg(feature = "llama")]
#[allow(unsafe_code)]
pub mod ffi;
pub mod gguf;
mod hash;
pub mod identity;
pub mod layer_vectors;
pub mod math;
pub mod media;
pub mod plot;
pub mod progress;
pub mod quant;
pub mod report;
pub mod sampling;
pub mod serve;
#[cfg(feature = "llama")]
pub mod session;
pub mod settings;
#[cfg(feature = "llama")]
pub mod steer;
#[cfg(feature = "llama")]
pub mod template;
pub mod tools;
pub mod vectors;

#[cfg(feature = "llama")]
pub use engine::{Engine, EngineOptions};
pub use error::{Error, Result};
pub use layer_vectors::LayerVectors;
pub use sampling::SamplingParams;
#[cfg(feature = "llama")]
pub use session::{GenerateOptions, Generation, Session, SessionOptions, StopReason, Turn};
#[cfg(feature = "llama")]
pub use steer::CmrmSteering;
pub use vectors::CmrmVectors;
