//! The OpenAI chat-completions request and response bodies, the `cmrm` extension object, and
//! errors in OpenAI's shape.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::settings::{Layers, Positions, SteerOverride};

/// An HTTP error with OpenAI's body: `{"error": {"code", "message", "type"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// OpenAI's error type (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// What went wrong and how to fix it.
    pub message: String,
    /// Extra fields (e.g. `n_prompt_tokens` and `n_ctx` of a prompt too long).
    pub extra: Option<Value>,
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    /// An error of status `status` and type `kind`.
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            extra: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut e = json!({"code": self.status, "message": self.message, "type": self.kind});
        if let (Some(Value::Object(extra)), Some(obj)) = (&self.extra, e.as_object_mut()) {
            obj.extend(extra.clone());
        }
        json!({ "error": e })
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        use crate::Error as E;
        match &e {
            E::ContextFull { needed, n_ctx } => Self {
                status: 400,
                kind: "exceed_context_size_error",
                message: format!(
                    "request ({needed} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"
                ),
                extra: Some(json!({"n_prompt_tokens": needed, "n_ctx": n_ctx})),
            },
            E::Image { .. } | E::Invalid(_) | E::Steering(_) | E::NoProjector | E::Template(_) => {
                Self::invalid(e.to_string())
            }
            E::Cancelled => Self::new(499, "cancelled", "the client went away"),
            _ => Self::new(500, "server_error", e.to_string()),
        }
    }
}

/// Fields of OpenAI's chat-completions request that only inform OpenAI's own bookkeeping (or
/// ask for what cmrm always does, like llama.cpp's `cache_prompt`): accepted and ignored.
const INFORMATIONAL: &[&str] = &[
    "user",
    "metadata",
    "store",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "reasoning_effort",
    "verbosity",
    "cache_prompt",
];

/// Documented fields cmrm does not implement: refused unless empty (null, false, `[]`, or
/// `modalities: ["text"]`).
const UNSUPPORTED: &[&str] = &[
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
];

/// `POST /v1/chat/completions` body: the fields cmrm reads; OpenAI's informational fields are
/// accepted and ignored, fields cmrm does not implement and unknown fields are refused (see
/// [`ChatRequest::check_fields`]).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<RequestMessage>,
    /// Ignored (one model is served), echoed back.
    #[serde(default)]
    pub model: Option<String>,
    /// Token limit.
    #[serde(default)]
    pub max_tokens: Option<i64>,
    /// Token limit (newer name; wins over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k (llama.cpp extension).
    #[serde(default)]
    pub top_k: Option<i32>,
    /// Min-p (llama.cpp extension).
    #[serde(default)]
    pub min_p: Option<f32>,
    /// Repetition penalty (llama.cpp extension).
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    /// Presence penalty.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Frequency penalty.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Random seed.
    #[serde(default)]
    pub seed: Option<i64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<StopField>,
    /// Number of choices (only 1).
    #[serde(default)]
    pub n: Option<u32>,
    /// Stream server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// `text`, `json_object` or `json_schema`.
    #[serde(default)]
    pub response_format: Option<Value>,
    /// A GBNF grammar the answer must follow (llama-server's extension).
    #[serde(default)]
    pub grammar: Option<String>,
    /// A JSON schema the answer must follow (llama-server's extension; OpenAI's way is
    /// `response_format`).
    #[serde(default)]
    pub json_schema: Option<Value>,
    /// Never stop at end-of-generation tokens (llama.cpp extension).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Return each answer token's log-probability.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// With `logprobs`, this many most likely tokens at each place (0 to 20).
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// Token biases, `{"token id": bias}`.
    #[serde(default)]
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Functions the model may call (OpenAI's `tools`).
    #[serde(default)]
    pub tools: Option<Value>,
    /// `none`, `auto`, `required` or one function.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// More than one tool call in an answer (default true).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// CMRM for this request.
    #[serde(default)]
    pub cmrm: Option<CmrmRequest>,
    /// Every other field, checked by [`ChatRequest::check_fields`].
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

impl ChatRequest {
    /// Refuses unknown fields as OpenAI does (400 naming the field) and documented fields cmrm
    /// does not implement; OpenAI's informational fields pass.
    pub fn check_fields(&self) -> Result<(), ApiError> {
        for (k, v) in &self.other {
            if INFORMATIONAL.contains(&k.as_str()) {
                continue;
            }
            if UNSUPPORTED.contains(&k.as_str()) {
                let empty = match v {
                    Value::Null | Value::Bool(false) => true,
                    Value::Array(a) => {
                        a.is_empty() || (k == "modalities" && a.iter().all(|m| m == "text"))
                    }
                    _ => false,
                };
                if empty {
                    continue;
                }
                return Err(ApiError::invalid(format!(
                    "{k} is not supported by cmrm serve: leave it out of the request"
                )));
            }
            return Err(ApiError::invalid(format!(
                "Unrecognized request argument supplied: {k} (cmrm serve takes OpenAI's chat-completions fields, llama.cpp's top_k, min_p, repeat_penalty, ignore_eos, grammar and json_schema, and the cmrm object; remove it or check its spelling)"
            )));
        }
        for (i, m) in self.messages.iter().enumerate() {
            for (k, v) in &m.other {
                match k.as_str() {
                    "name" | "refusal" => {}
                    "function_call" | "audio"
                        if v.is_null() || v.as_array().is_some_and(Vec::is_empty) => {}
                    "function_call" | "audio" => {
                        return Err(ApiError::invalid(format!(
                            "messages[{i}].{k} is not supported by cmrm serve: leave it out of the message"
                        )))
                    }
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "Unrecognized request argument supplied: messages[{i}].{k} (a message has role, content, name, tool_calls and tool_call_id; remove it)"
                        )))
                    }
                }
            }
        }
        Ok(())
    }
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// A message of the request.
#[derive(Debug, Deserialize)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, a list of parts, or null.
    #[serde(default)]
    pub content: Option<Content>,
    /// An assistant message's tool calls.
    #[serde(default)]
    pub tool_calls: Option<Value>,
    /// A tool message's call id.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// Every other field (`name` is accepted and ignored).
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// Message content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<Part>),
}

/// A content part.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// An image by URL (data URI, bare base64, file:// below --media-path, http(s) with
    /// --media-fetch).
    ImageUrl {
        /// `{"url": ...}`.
        image_url: ImageUrl,
    },
}

/// `image_url`.
#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    /// The URL.
    pub url: String,
}

/// The `cmrm` extension object of a request.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CmrmRequest {
    /// Steer this request (text-only requests are steered only when this is true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Scale.
    #[serde(default)]
    pub alpha: Option<f32>,
    /// Layers, `"A-B"` or `"A"`.
    #[serde(default)]
    pub layers: Option<String>,
    /// `last`, `after-image` or `all`.
    #[serde(default)]
    pub positions: Option<String>,
    /// Sample-level (the request's own shift).
    #[serde(default)]
    pub sample: Option<bool>,
    /// Corruption of a sample-level shift (`blank`, `noise`, `noise:SEED`, `anchor`).
    #[serde(default)]
    pub corruption: Option<String>,
}

impl CmrmRequest {
    /// The session override for this request; `has_image` decides whether an explicit
    /// `enabled: true` also steers a text-only request.
    pub fn overrides(&self, has_image: bool) -> Result<SteerOverride, ApiError> {
        let bad = |field: &str, e: String| ApiError::invalid(format!("cmrm.{field}: {e}"));
        let corruption = match &self.corruption {
            None => None,
            Some(c) => match c.as_str() {
                "blank" | "noise" | "anchor" => Some(c.parse().map_err(|e| bad("corruption", e))?),
                c if c.starts_with("noise:") => Some(c.parse().map_err(|e| bad("corruption", e))?),
                other => {
                    return Err(bad(
                        "corruption",
                        format!("{other:?} is not blank, noise, noise:SEED or anchor"),
                    ))
                }
            },
        };
        if let Some(a) = self.alpha {
            if !a.is_finite() || a.abs() > 100.0 {
                return Err(bad("alpha", format!("{a} is outside -100..100")));
            }
        }
        Ok(SteerOverride {
            enabled: self.enabled,
            sample: self.sample,
            corruption,
            alpha: self.alpha,
            apply: None,
            layers: self
                .layers
                .as_deref()
                .map(str::parse::<Layers>)
                .transpose()
                .map_err(|e| bad("layers", e))?,
            positions: self
                .positions
                .as_deref()
                .map(str::parse::<Positions>)
                .transpose()
                .map_err(|e| bad("positions", e))?,
            text_only: (self.enabled == Some(true) && !has_image).then_some(true),
        })
    }
}

/// Token counts of an answer.
#[cfg(feature = "serve")]
#[derive(Debug, Clone, serde::Serialize)]
pub struct Usage {
    /// Prompt tokens (image embeddings included).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// Of the prompt, tokens reused from the slot's cache.
    pub prompt_tokens_details: CachedTokens,
}

/// `prompt_tokens_details`.
#[cfg(feature = "serve")]
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedTokens {
    /// Reused tokens.
    pub cached_tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_parts_and_the_cmrm_object() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"x","messages":[{"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"What is it?"},
                {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}],
                "max_tokens":16,"stream":true,"stream_options":{"include_usage":true},
                "stop":"\n","cmrm":{"enabled":true,"alpha":0.5,"layers":"12-14","sample":true}}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        assert!(r.stream && r.stream_options.unwrap().include_usage);
        let o = r.cmrm.unwrap().overrides(true).unwrap();
        assert_eq!(o.layers, Some(Layers::Range(12, 14)));
        assert_eq!(
            (o.alpha, o.sample, o.text_only),
            (Some(0.5), Some(true), None)
        );
        let bad: Result<ChatRequest, _> =
            serde_json::from_str(r#"{"messages":[],"cmrm":{"alhpa":1}}"#);
        assert!(bad.is_err(), "a misspelt cmrm field is refused");
        let e = CmrmRequest {
            layers: Some("x".into()),
            ..CmrmRequest::default()
        }
        .overrides(true)
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("cmrm.layers"));
    }

    #[test]
    fn errors_have_openai_shape() {
        let e = ApiError::from(crate::Error::ContextFull {
            needed: 9000,
            n_ctx: 4096,
        });
        let b = e.body();
        assert_eq!(b["error"]["code"], 400);
        assert_eq!(b["error"]["type"], "exceed_context_size_error");
        assert_eq!(b["error"]["n_ctx"], 4096);
    }
}
