//! cmrm: Cross-Modality Representation Manipulation for quantized vision-language models on
//! llama.cpp.
//!
//! A VLM's safety alignment lives in its language backbone, trained on text. Images shift the
//! backbone's hidden states away from the text-only distribution and refusals collapse. CMRM
//! estimates that shift per layer and removes it at inference time. This crate loads GGUF VLMs
//! through llama.cpp's multimodal (mtmd) path ([`engine`], [`session`]), reads and edits the
//! residual stream inside llama.cpp's compute graph ([`ffi`]), and generates with streaming
//! output.

pub mod calibrate;
pub mod capture;
pub mod data;
pub mod engine;
pub mod eval;
pub mod ffi;
pub mod gguf;
pub mod media;
pub mod plot;
pub mod progress;
pub mod report;
pub mod sampling;
pub mod session;
pub mod steer;
pub mod vectors;

pub use engine::{Engine, EngineOptions};
pub use sampling::SamplingParams;
pub use session::{Generation, NoHooks, Phase, Prompt, PromptHooks, Session, StopReason};
