//! The pure half of a request: its JSON body checked field by field and turned into the
//! conversation (images still as URLs), the limits, the sampling settings over the server's
//! and the CMRM settings over the server's. It needs no model, so the fuzz target
//! `tests/fuzz/fuzz_targets/chat_request.rs` runs it without llama.cpp; `request` then fetches
//! the images and builds the turn.

use std::path::PathBuf;

use serde_json::Value;

use super::api::{ApiError, ChatRequest, Content, Part, StopField};
use super::calls::{message_calls, tool_request, ToolRequest};
use crate::sampling::SamplingParams;
use crate::settings::SteerOverride;
use crate::tools::ToolCall;

/// Most stop strings in a request (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Longest stop string, bytes.
pub const MAX_STOP_BYTES: usize = 256;

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
    /// Tokens generated at most when a request sets no limit (`-n`; `None`: `max_tokens`).
    pub default_max_tokens: Option<usize>,
    /// `file://` images are read below this folder only (none: refused).
    pub media_path: Option<PathBuf>,
    /// Fetch `http(s)://` images (off: refused).
    pub media_fetch: bool,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speaker {
    /// `system` or `developer`.
    System,
    /// `user`.
    User,
    /// `assistant`.
    Assistant,
    /// `tool`: a tool's result.
    Tool,
}

/// A piece of a message's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text (parts of one message are joined by newlines).
    Text(String),
    /// An image, by the URL the request gave (not fetched yet).
    Image(String),
}

/// A message of the request.
#[derive(Clone, Debug)]
pub struct ParsedMessage {
    /// Who wrote it.
    pub speaker: Speaker,
    /// Its content, in order.
    pub pieces: Vec<Piece>,
    /// An assistant message's tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// A tool message's call id.
    pub tool_call_id: Option<String>,
}

/// A request checked and resolved against the server's settings; its last message is the
/// user's or a tool's.
#[derive(Debug)]
pub struct Parsed {
    /// The conversation, the user's last message included.
    pub messages: Vec<ParsedMessage>,
    /// Sampling settings: the server's, with the request's over them (no grammar yet).
    pub sampling: SamplingParams,
    /// What the answer must follow (`response_format`, `json_schema` or `grammar`), when
    /// one is asked for.
    pub constraint: Option<Constraint>,
    /// CMRM settings: the server's, with the request's `cmrm` object over them.
    pub steering: SteerOverride,
    /// The tools offered to the model (`None`: none, or `tool_choice: "none"`).
    pub tools: Option<ToolRequest>,
    /// Tokens generated at most.
    pub max_tokens: usize,
    /// Never stop at end-of-generation tokens.
    pub ignore_eos: bool,
    /// Stop strings (non-empty ones).
    pub stop: Vec<String>,
    /// Log-probabilities with this many alternatives per token (`None`: not asked for).
    pub logprobs: Option<usize>,
    /// Stream the answer.
    pub stream: bool,
    /// Send the usage in a last streamed chunk.
    pub include_usage: bool,
    /// The model name to answer with.
    pub model: Option<String>,
}

/// Parses and checks a chat-completions body; `defaults` are the server's sampling settings
/// and `steer_defaults` its CMRM settings. Nothing is fetched or decoded.
pub fn parse(
    body: &[u8],
    defaults: &SamplingParams,
    steer_defaults: &SteerOverride,
    limits: &Limits,
) -> Result<Parsed, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!("the request body is not a valid chat request: {e}"))
    })?;
    check(req, defaults, steer_defaults, limits)
}

/// [`parse`] of a deserialized body.
pub fn check(
    req: ChatRequest,
    defaults: &SamplingParams,
    steer_defaults: &SteerOverride,
    limits: &Limits,
) -> Result<Parsed, ApiError> {
    req.check_fields()?;
    let constraint = constraint(&req)?;
    let tools = tool_request(
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    if constraint.is_some() && tools.as_ref().is_some_and(|t| t.forced().is_some()) {
        return Err(ApiError::invalid(
            "a required tool call and response_format, json_schema or grammar each constrain the answer: send one of them",
        ));
    }
    if let Some(n) = req.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid(format!(
            "n = {n}: cmrm serve answers with one choice only; send n = 1 or leave it out"
        )));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "'messages' must hold at least one message",
        ));
    }
    let mut n_images = 0;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let speaker = match m.role.as_str() {
            "system" | "developer" => Speaker::System,
            "user" => Speaker::User,
            "assistant" => Speaker::Assistant,
            "tool" => Speaker::Tool,
            other => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].role {other:?} is not system, developer, user, assistant or tool"
                )))
            }
        };
        let tool_calls = match &m.tool_calls {
            None => Vec::new(),
            Some(_) if speaker != Speaker::Assistant => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].tool_calls: only assistant messages carry tool calls"
                )))
            }
            Some(v) => message_calls(i, v)?,
        };
        let tool_call_id = match (speaker, m.tool_call_id) {
            (Speaker::Tool, Some(id)) => Some(id),
            (Speaker::Tool, None) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}]: a tool message needs the tool_call_id of the call it answers"
                )))
            }
            (_, Some(_)) => {
                return Err(ApiError::invalid(format!(
                    "messages[{i}].tool_call_id: only tool messages answer a call"
                )))
            }
            (_, None) => None,
        };
        let pieces = match m.content {
            None => Vec::new(),
            Some(Content::Text(t)) => vec![Piece::Text(t)],
            Some(Content::Parts(parts)) => {
                let mut pieces = Vec::with_capacity(parts.len());
                for p in parts {
                    match p {
                        Part::Text { text } => pieces.push(Piece::Text(text)),
                        Part::ImageUrl { image_url } => {
                            n_images += 1;
                            if n_images > limits.max_images {
                                return Err(ApiError::invalid(format!(
                                    "more than {} images in one request (--max-images)",
                                    limits.max_images
                                )));
                            }
                            if speaker != Speaker::User {
                                return Err(ApiError::invalid(format!(
                                    "messages[{i}]: images are accepted in user messages only"
                                )));
                            }
                            pieces.push(Piece::Image(image_url.url));
                        }
                    }
                }
                pieces
            }
        };
        messages.push(ParsedMessage {
            speaker,
            pieces,
            tool_calls,
            tool_call_id,
        });
    }
    if !matches!(
        messages.last().map(|m| m.speaker),
        Some(Speaker::User | Speaker::Tool)
    ) {
        return Err(ApiError::invalid(
            "the last message must be the user's or a tool's result (cmrm serve does not continue an assistant message)",
        ));
    }
    let has_image = messages
        .last()
        .is_some_and(|m| m.pieces.iter().any(|p| matches!(p, Piece::Image(_))));
    let mut steering = steer_defaults.clone();
    if let Some(c) = &req.cmrm {
        steering = c.overrides(has_image)?.over(&steering);
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None | Some(-1) => limits
            .default_max_tokens
            .map_or(limits.max_tokens, |n| n.min(limits.max_tokens)),
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
        Some(n) => n as usize,
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
    p.grammar = None;
    p.check().map_err(ApiError::invalid)?;
    let stop = match req.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(format!(
            "stop has {} strings; at most {MAX_STOP} are accepted (as OpenAI): send fewer",
            stop.len()
        )));
    }
    if let Some((i, s)) = stop
        .iter()
        .enumerate()
        .find(|(_, s)| s.len() > MAX_STOP_BYTES)
    {
        return Err(ApiError::invalid(format!(
            "stop[{i}] has {} bytes; a stop string has at most {MAX_STOP_BYTES}: shorten it",
            s.len()
        )));
    }
    let logprobs = logprobs(req.logprobs, req.top_logprobs)?;
    Ok(Parsed {
        messages,
        sampling: p,
        constraint,
        steering,
        tools,
        max_tokens,
        ignore_eos: req.ignore_eos,
        stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        logprobs,
        stream: req.stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        model: req.model,
    })
}

/// Most alternatives per token (`top_logprobs`, as OpenAI).
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// OpenAI's `logprobs` and `top_logprobs`: alternatives per token when log-probabilities are
/// asked for; `top_logprobs` without `logprobs: true` is a 400, as OpenAI answers it.
fn logprobs(on: Option<bool>, top: Option<i64>) -> Result<Option<usize>, ApiError> {
    match (on.unwrap_or(false), top) {
        (_, Some(k)) if !(0..=MAX_TOP_LOGPROBS).contains(&k) => Err(ApiError::invalid(format!(
            "top_logprobs = {k}: it must be between 0 and {MAX_TOP_LOGPROBS}"
        ))),
        (false, Some(_)) => Err(ApiError::invalid(
            "top_logprobs needs logprobs: true (send both, or leave top_logprobs out)",
        )),
        (false, None) => Ok(None),
        (true, k) => Ok(Some(k.unwrap_or(0) as usize)),
    }
}

/// A constraint on the answer's text.
#[derive(Debug, PartialEq)]
pub enum Constraint {
    /// A JSON schema (`response_format` or llama-server's `json_schema`).
    Schema(Value),
    /// A GBNF grammar (llama-server's `grammar`).
    Grammar(String),
}

/// The one constraint a request asks for: `response_format`, `json_schema` or `grammar`; more
/// than one is a 400 (which would win is not obvious).
fn constraint(req: &ChatRequest) -> Result<Option<Constraint>, ApiError> {
    let format = response_schema(req.response_format.as_ref())?;
    let schema = match &req.json_schema {
        None | Some(Value::Null) => None,
        Some(s @ Value::Object(_)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::invalid(
                "json_schema must be a JSON schema object",
            ))
        }
    };
    let grammar = req.grammar.clone().filter(|g| !g.trim().is_empty());
    let given: Vec<&str> = [
        ("response_format", format.is_some()),
        ("json_schema", schema.is_some()),
        ("grammar", grammar.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| *name)
    .collect();
    if given.len() > 1 {
        return Err(ApiError::invalid(format!(
            "{} each constrain the answer: send one of them",
            given.join(" and ")
        )));
    }
    Ok(format
        .or(schema)
        .map(Constraint::Schema)
        .or(grammar.map(Constraint::Grammar)))
}

/// The JSON schema a `response_format` asks for.
fn response_schema(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let Some(f) = format else { return Ok(None) };
    let kind = f.get("type").and_then(Value::as_str).unwrap_or("text");
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(
            f.get("schema")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"type": "object"})),
        )),
        "json_schema" => f
            .get("json_schema")
            .and_then(|j| j.get("schema"))
            .cloned()
            .map(Some)
            .ok_or_else(|| ApiError::invalid("response_format.json_schema.schema is missing")),
        other => Err(ApiError::invalid(format!(
            "response_format type {other:?} is not text, json_object or json_schema"
        ))),
    }
}

fn random_seed() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(extra: Value) -> Result<Parsed, ApiError> {
        let mut body = serde_json::json!({"messages": [{"role": "user", "content": "Hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let limits = Limits {
            max_image_bytes: 1 << 20,
            max_image_pixels: 1 << 20,
            max_images: 1,
            max_tokens: 16,
            default_max_tokens: None,
            media_path: None,
            media_fetch: false,
        };
        let body = serde_json::to_vec(&body).unwrap();
        parse(
            &body,
            &SamplingParams::default(),
            &SteerOverride::default(),
            &limits,
        )
    }

    #[test]
    fn logprobs_and_top_logprobs_are_taken_as_openai_takes_them() {
        let lp = |v: Value| parsed(v).map(|p| p.logprobs).map_err(|e| e.message);
        assert_eq!(lp(serde_json::json!({})), Ok(None));
        assert_eq!(lp(serde_json::json!({"logprobs": false})), Ok(None));
        assert_eq!(lp(serde_json::json!({"logprobs": true})), Ok(Some(0)));
        assert_eq!(
            lp(serde_json::json!({"logprobs": true, "top_logprobs": 20})),
            Ok(Some(20))
        );
        for bad in [
            serde_json::json!({"logprobs": true, "top_logprobs": 21}),
            serde_json::json!({"logprobs": true, "top_logprobs": -1}),
            serde_json::json!({"top_logprobs": 2}),
            serde_json::json!({"logprobs": false, "top_logprobs": 2}),
        ] {
            let e = lp(bad.clone()).unwrap_err();
            assert!(e.contains("top_logprobs"), "{bad}: {e}");
        }
    }
}
