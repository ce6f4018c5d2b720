//! From an OpenAI request to a turn: messages to the conversation and the user's turn, images
//! fetched and checked against the limits, sampling settings over the server's defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::api::{ApiError, ChatRequest, Content, Part, StopField};
use crate::media::{self, Image};
use crate::sampling::{Sampling, SamplingParams};
use crate::session::{GenerateOptions, Message, Role, SteerOverride, Turn};

/// What a request may ask for.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest image, in bytes (encoded).
    pub max_image_bytes: usize,
    /// Largest image, in pixels.
    pub max_image_pixels: u64,
    /// Most images in one request.
    pub max_images: usize,
    /// Largest `max_tokens`.
    pub max_tokens: usize,
    /// Tokens generated when a request sets no limit (`None`: until the end or a full context).
    pub default_max_tokens: Option<usize>,
    /// `file://` images are read below this folder only (none: refused).
    pub media_path: Option<PathBuf>,
    /// Fetch `http(s)://` images (off: refused).
    pub media_fetch: bool,
}

/// A request made ready for a slot.
pub struct Prepared {
    /// The conversation before the user's last message.
    pub history: Vec<Message>,
    /// The user's last message.
    pub turn: Turn,
    /// How to answer.
    pub options: GenerateOptions,
    /// Stream the answer.
    pub stream: bool,
    /// Send the usage in a last streamed chunk.
    pub include_usage: bool,
    /// The model name to answer with.
    pub model: Option<String>,
}

/// Checks `req` and turns it into a turn; `defaults` are the server's sampling settings and
/// `steer_defaults` its CMRM settings (which the request's `cmrm` object overrides).
pub fn prepare(
    req: ChatRequest,
    defaults: &SamplingParams,
    steer_defaults: &SteerOverride,
    limits: &Limits,
) -> Result<Prepared, ApiError> {
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(format!(
            "n = {}: cmrm serve answers with one choice only; send n = 1 or leave it out",
            req.n.unwrap_or(0)
        )));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "'messages' must hold at least one message",
        ));
    }
    let mut n_images = 0;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role {other:?} is not system, developer, user or assistant"
                )))
            }
        };
        let (text, images) = match &m.content {
            None => (String::new(), Vec::new()),
            Some(Content::Text(t)) => (t.clone(), Vec::new()),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                let mut images = Vec::new();
                let mut after_text = false;
                for (j, p) in parts.iter().enumerate() {
                    match p {
                        Part::Text { text: t } => {
                            if after_text {
                                text.push('\n');
                            }
                            text.push_str(t);
                            after_text = true;
                        }
                        Part::ImageUrl { image_url } => {
                            n_images += 1;
                            if n_images > limits.max_images {
                                return Err(ApiError::invalid(format!(
                                    "more than {} images in one request (--max-images)",
                                    limits.max_images
                                )));
                            }
                            if role != Role::User {
                                return Err(ApiError::invalid(format!(
                                    "messages[{i}]: images are accepted in user messages only"
                                )));
                            }
                            let image = load_url(&image_url.url, limits).map_err(|e| {
                                ApiError::invalid(format!(
                                    "messages[{i}].content[{j}].image_url: {e}"
                                ))
                            })?;
                            text.push_str(&crate::ffi::Mtmd::marker());
                            images.push(image);
                            after_text = false;
                        }
                    }
                }
                (text, images)
            }
        };
        if text.contains(&crate::ffi::Mtmd::marker()) && images.is_empty() {
            return Err(ApiError::invalid(format!(
                "messages[{i}] holds the media marker as text; send images as image_url parts"
            )));
        }
        messages.push(Message { role, text, images });
    }
    let last = messages.pop().filter(|m| m.role == Role::User).ok_or_else(|| {
        ApiError::invalid("the last message must be the user's (cmrm serve does not continue an assistant message)")
    })?;
    let has_image = !last.images.is_empty();
    let mut overrides = steer_defaults.clone();
    if let Some(c) = &req.cmrm {
        let o = c.overrides(has_image)?;
        overrides = o.over(&overrides);
    }
    let turn = Turn {
        system: None,
        text: last.text,
        images: last.images,
        steering: Some(overrides),
    };
    if req.ignore_eos
        && req.max_completion_tokens.or(req.max_tokens).is_none()
        && limits.default_max_tokens.is_none()
    {
        return Err(ApiError::invalid(
            "ignore_eos needs max_tokens, or the answer would fill the context",
        ));
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None | Some(-1) => limits.default_max_tokens,
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(format!(
                "max_tokens = {n}: it must be at least 1"
            )))
        }
        Some(n) if n as u64 > limits.max_tokens as u64 => {
            return Err(ApiError::invalid(format!(
                "max_tokens = {n} is above this server's limit of {} (--max-tokens)",
                limits.max_tokens
            )))
        }
        Some(n) => Some(n as usize),
    };
    let mut p = defaults.clone();
    if let Some(t) = req.temperature {
        p.temp = t.max(0.0);
    }
    if let Some(v) = req.top_p {
        p.top_p = v.clamp(0.0, 1.0);
    }
    if let Some(v) = req.top_k {
        p.top_k = v.max(0);
    }
    if let Some(v) = req.min_p {
        p.min_p = v.clamp(0.0, 1.0);
    }
    if let Some(v) = req.repeat_penalty {
        p.repeat_penalty = v;
    }
    if let Some(v) = req.presence_penalty {
        p.presence_penalty = v;
    }
    if let Some(v) = req.frequency_penalty {
        p.frequency_penalty = v;
    }
    p.seed = match req.seed {
        Some(s) if s >= 0 => s as u32,
        _ => random_seed(),
    };
    if let Some(bias) = &req.logit_bias {
        for (k, v) in bias {
            let token: i32 = k.parse().map_err(|_| {
                ApiError::invalid(format!("logit_bias key {k:?} is not a token id"))
            })?;
            let b = match v {
                Value::Bool(false) => f32::NEG_INFINITY,
                v => v
                    .as_f64()
                    .ok_or_else(|| ApiError::invalid(format!("logit_bias[{k}] is not a number")))?
                    as f32,
            };
            p.logit_bias.push((token, b));
        }
    }
    p.grammar = response_grammar(req.response_format.as_ref())?;
    p.check().map_err(ApiError::invalid)?;
    let stop = match req.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    Ok(Prepared {
        history: messages,
        turn,
        options: GenerateOptions {
            sampling: Sampling::Chain(p),
            max_tokens,
            ignore_eos: req.ignore_eos,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        },
        stream: req.stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        model: req.model,
    })
}

use serde_json::Value;

/// The grammar a `response_format` asks for.
fn response_grammar(format: Option<&Value>) -> Result<Option<String>, ApiError> {
    let Some(f) = format else { return Ok(None) };
    let kind = f.get("type").and_then(Value::as_str).unwrap_or("text");
    let schema = match kind {
        "text" => return Ok(None),
        "json_object" => f
            .get("schema")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        "json_schema" => f
            .get("json_schema")
            .and_then(|j| j.get("schema"))
            .cloned()
            .ok_or_else(|| ApiError::invalid("response_format.json_schema.schema is missing"))?,
        other => {
            return Err(ApiError::invalid(format!(
                "response_format type {other:?} is not text, json_object or json_schema"
            )))
        }
    };
    crate::ffi::json_schema_to_grammar(&schema.to_string())
        .map(Some)
        .map_err(|e| ApiError::invalid(format!("response_format: {e}")))
}

fn random_seed() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16)
}

/// An image from a request's URL: a data URI, bare base64, `file://` below the media folder,
/// or `http(s)://` when fetching is allowed; checked against the size limits.
fn load_url(url: &str, limits: &Limits) -> Result<Image, String> {
    let bytes = if url.starts_with("data:") {
        media::decode_data_uri(url).map_err(|e| e.to_string())?
    } else if let Some(path) = url.strip_prefix("file://") {
        let root = limits
            .media_path
            .as_deref()
            .ok_or("file:// URLs are not allowed unless the server runs with --media-path DIR")?;
        read_below(root, path, limits.max_image_bytes)?
    } else if url.starts_with("http://") || url.starts_with("https://") {
        if !limits.media_fetch {
            return Err(
                "image URLs are not fetched unless the server runs with --media-fetch".into(),
            );
        }
        fetch(url, limits.max_image_bytes)?
    } else {
        media::decode_base64(url)
            .map_err(|e| format!("not a data URI, URL or base64 image: {e}"))?
    };
    if bytes.len() > limits.max_image_bytes {
        return Err(format!(
            "the image has {} bytes, more than the {} this server accepts (--max-image-bytes)",
            bytes.len(),
            limits.max_image_bytes
        ));
    }
    let image = Image::decode(bytes, "the image").map_err(|e| e.to_string())?;
    let px = image.pixels();
    let pixels = px.width() as u64 * px.height() as u64;
    if pixels > limits.max_image_pixels {
        return Err(format!(
            "the image has {}x{} pixels, more than the {} this server accepts (--max-image-pixels)",
            px.width(),
            px.height(),
            limits.max_image_pixels
        ));
    }
    Ok(image)
}

/// Reads `rel` below `root`, refusing paths that leave it.
fn read_below(root: &Path, rel: &str, max: usize) -> Result<Vec<u8>, String> {
    let rel = rel.trim_start_matches('/');
    let bad = || format!("file://{rel} is not a file below the media folder");
    if Path::new(rel)
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(bad());
    }
    let root = root.canonicalize().map_err(|_| bad())?;
    let path = root.join(rel).canonicalize().map_err(|_| bad())?;
    if !path.starts_with(&root) || !path.is_file() {
        return Err(bad());
    }
    let len = path.metadata().map_err(|_| bad())?.len();
    if len > max as u64 {
        return Err(format!("file://{rel} is larger than --max-image-bytes"));
    }
    std::fs::read(&path).map_err(|e| format!("file://{rel}: {e}"))
}

/// Fetches an image URL with a 10 s time limit and `max` bytes at most.
fn fetch(url: &str, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    let mut bytes = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot fetch {url}: {e}"))?;
    Ok(bytes)
}
