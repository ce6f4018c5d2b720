//! `cmrm serve`: an OpenAI-compatible multimodal chat server (a drop-in for llama-server's
//! `/v1/chat/completions`) with CMRM on every image request, controllable per request through
//! a `cmrm` extension object, and a page to try it at `/`. Parsing a request (`api`, `parse`)
//! needs no model and builds without the `llama` feature, for the fuzz targets.

mod api;
mod calls;
mod parse;

#[cfg(feature = "serve")]
mod front;
#[cfg(feature = "serve")]
mod http;
#[cfg(feature = "serve")]
mod metrics;
#[cfg(feature = "serve")]
mod props;
#[cfg(feature = "serve")]
mod request;
#[cfg(feature = "serve")]
mod server;
#[cfg(feature = "serve")]
mod slots;
#[cfg(feature = "serve")]
mod tokens;

pub use api::{ApiError, ChatRequest, CmrmRequest};
pub use calls::{ToolChoice, ToolRequest, MAX_TOOLS};
#[cfg(feature = "serve")]
pub use front::{run_front, FrontOptions, WORKER_ENV};
pub use parse::{
    parse, Constraint, Limits, Parsed, ParsedMessage, Piece, Speaker, MAX_STOP, MAX_STOP_BYTES,
};
#[cfg(feature = "serve")]
pub use server::{run, ServeOptions};
