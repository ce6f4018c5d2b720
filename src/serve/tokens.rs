//! llama-server's `/tokenize`, `/detokenize` and `/apply-template`: the served model's
//! vocabulary and chat template, for clients that count or build prompts in tokens.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::ApiError;
use super::http::{admit_and_read, read_body, App};
use super::parse::parse;
use super::request::prepare;

/// `POST /tokenize` body (llama-server's fields and defaults).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    /// The text.
    content: String,
    /// Add the model's BOS (and EOS) tokens as a prompt would.
    #[serde(default)]
    add_special: bool,
    /// Read special-token text such as `<|im_start|>` as those tokens.
    #[serde(default = "yes")]
    parse_special: bool,
    /// Answer `{id, piece}` pairs instead of bare ids.
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// `POST /detokenize` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    /// Token ids.
    tokens: Vec<i64>,
}

/// The body as `T`, or a 400 naming what is wrong with it.
async fn body<T: serde::de::DeserializeOwned>(app: &App, body: Body) -> Result<T, ApiError> {
    let bytes = read_body(app, body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid here: {e}")))
}

/// Runs the model's tokenizer off the server's async threads (a long text takes a while).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::new(500, "server_error", "the tokenizer failed (logged)"))?
}

fn answer(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /tokenize`: `{"tokens": [ids]}`, or with `with_pieces` `{"tokens": [{"id", "piece"}]}`
/// where a piece that is not UTF-8 on its own is its list of bytes (as llama-server answers).
pub(super) async fn tokenize(State(app): State<App>, b: Body) -> Response {
    answer(tokenize_inner(app, b).await)
}

async fn tokenize_inner(app: App, b: Body) -> Result<Value, ApiError> {
    let req: TokenizeRequest = body(&app, b).await?;
    let engine = app.engine;
    blocking(move || {
        let model = engine.model();
        let ids = model
            .tokenize(&req.content, req.add_special, req.parse_special)
            .map_err(ApiError::from)?;
        if !req.with_pieces {
            return Ok(json!({ "tokens": ids }));
        }
        let pieces: Vec<Value> = ids
            .iter()
            .map(|&id| {
                let bytes = model.token_bytes(id, true);
                let piece = match String::from_utf8(bytes) {
                    Ok(s) => json!(s),
                    Err(e) => json!(e.into_bytes()),
                };
                json!({"id": id, "piece": piece})
            })
            .collect();
        Ok(json!({ "tokens": pieces }))
    })
    .await
}

/// `POST /detokenize`: `{"content": text}` of the ids, special tokens written out; an id
/// outside the vocabulary is a 400 naming its place.
pub(super) async fn detokenize(State(app): State<App>, b: Body) -> Response {
    answer(detokenize_inner(app, b).await)
}

async fn detokenize_inner(app: App, b: Body) -> Result<Value, ApiError> {
    let req: DetokenizeRequest = body(&app, b).await?;
    let engine = app.engine;
    blocking(move || {
        let model = engine.model();
        let n_vocab = model.n_vocab();
        let mut bytes = Vec::new();
        for (i, &id) in req.tokens.iter().enumerate() {
            let id = i32::try_from(id)
                .ok()
                .filter(|&t| t >= 0 && (t as usize) < n_vocab)
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "tokens[{i}] = {id} is not a token of this model (ids run from 0 to {})",
                        n_vocab - 1
                    ))
                })?;
            bytes.extend(model.token_bytes(id, true));
        }
        Ok(json!({ "content": String::from_utf8_lossy(&bytes) }))
    })
    .await
}

/// `POST /apply-template`: `{"prompt": text}`, a chat request's conversation (with its tools)
/// rendered by the chat template as the model would read it, images as media markers. It
/// takes a queue place like a chat request while its images are read.
pub(super) async fn apply_template(State(app): State<App>, b: Body) -> Response {
    answer(apply_template_inner(app, b).await)
}

async fn apply_template_inner(app: App, b: Body) -> Result<Value, ApiError> {
    let (place, bytes) = admit_and_read(&app, b).await?;
    let parsed = parse(&bytes, &app.sampling, &app.steering, &app.limits)?;
    let prompt = blocking(move || {
        let template = app.engine.template();
        let p = prepare(
            parsed,
            &app.limits,
            &app.metrics.images_decoded,
            template.tool_format(),
        )?;
        let mut messages = p.history;
        messages.push(p.turn.message());
        Ok(template.render_with_tools(&messages, &p.tools)?)
    })
    .await?;
    drop(place);
    Ok(json!({ "prompt": prompt }))
}
