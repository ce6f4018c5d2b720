//! The HTTP side: routes, API keys, request limits, server-sent events and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::api::ApiError;
use super::metrics::Metrics;
use super::parse::{parse, Limits, Piece};
use super::request::prepare;
use super::slots::{conversation_keys, Canceller, Event, Outcome, Place, Pool};
use super::{props, tokens};
use crate::sampling::SamplingParams;
use crate::session::{SteerOverride, StopReason, TokenChoice, TokenLogprob};
use crate::tools::{split, ToolCall, ToolEvent, ToolStream};

/// What the handlers share.
pub struct Shared {
    /// The model (for `/tokenize`, `/detokenize` and `/props`).
    pub engine: &'static crate::engine::Engine,
    /// The slots.
    pub pool: Pool,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Sampling settings of the server (flags).
    pub sampling: SamplingParams,
    /// CMRM settings of the server (flags and the vector file).
    pub steering: SteerOverride,
    /// Request limits.
    pub limits: Limits,
    /// Accepted API keys (none: no key needed).
    pub keys: Vec<String>,
    /// The model name answers carry.
    pub model: String,
    /// Whether a projector is loaded.
    pub vision: bool,
    /// Largest request body, bytes.
    pub max_request_bytes: usize,
    /// How long a request waits for its body or a slot.
    pub timeout: Duration,
    /// Serve `/metrics`.
    pub metrics_endpoint: bool,
    /// Context size of a slot.
    pub n_ctx: usize,
    /// The address the server listens on.
    pub addr: SocketAddr,
}

pub(super) type App = Arc<Shared>;

/// Pieces of an answer waiting for a slow client; when they are all waiting for --timeout,
/// the slot stops the answer.
const EVENTS: usize = 16;

/// The routes.
pub fn router(shared: App) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .route("/apply-template", post(tokens::apply_template))
        .route("/props", get(props::props))
        .route("/slots", get(props::slots))
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), auth))
        .layer(middleware::from_fn_with_state(shared.clone(), same_origin))
        .with_state(shared)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

/// Refuses what a web page of another site could make a browser send (as llama-server does):
/// a `Host` other than a loopback name when the server listens on loopback (DNS rebinding),
/// an `Origin` other than the server's own or a loopback one (403), and a POST body that is
/// not `application/json` (415: a form or `text/plain` POST needs no CORS preflight).
async fn same_origin(State(app): State<App>, req: Request, next: Next) -> Response {
    match cross_site(&app, &req) {
        None => next.run(req).await,
        Some(e) => refuse(&app, req.into_body(), e).await,
    }
}

/// Why [`same_origin`] refuses `req`, if it does.
fn cross_site(app: &Shared, req: &Request) -> Option<ApiError> {
    let h = req.headers();
    let text = |name| h.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let host = text(header::HOST);
    let refuse =
        |status, message: String| Some(ApiError::new(status, "invalid_request_error", message));
    if app.addr.ip().is_loopback() {
        if let Some(host) = host.filter(|h| !is_loopback_host(host_name(h))) {
            return refuse(
                403,
                format!(
                    "the Host header {host:?} is not a loopback name, and this server listens on {} only: connect to http://127.0.0.1:{} or http://localhost:{} (a name that resolves to loopback is refused, against DNS rebinding)",
                    app.addr.ip(),
                    app.addr.port(),
                    app.addr.port()
                ),
            );
        }
    }
    if let Some(origin) = text(header::ORIGIN) {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let allowed = authority.is_some_and(|a| {
            host.is_some_and(|h| a.eq_ignore_ascii_case(h)) || is_loopback_host(host_name(a))
        });
        if !allowed {
            return refuse(
                403,
                format!(
                    "cross-origin request refused: the Origin header {origin:?} is neither this server nor a loopback address; call the API from the server's own page, from loopback, or from a client that sends no Origin"
                ),
            );
        }
    }
    if req.method() == axum::http::Method::POST {
        let json = text(header::CONTENT_TYPE).is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return refuse(
                415,
                format!(
                    "the Content-Type header is {}, not application/json: send the body as JSON with Content-Type: application/json",
                    text(header::CONTENT_TYPE).map_or("missing".into(), |t| format!("{t:?}"))
                ),
            );
        }
    }
    None
}

/// Answers `e` to a request refused before its body was read, counted as an error; the body
/// is read and dropped first (see [`discard_body`]).
async fn refuse(app: &Shared, body: Body, e: ApiError) -> Response {
    app.metrics.errors.fetch_add(1, Ordering::Relaxed);
    discard_body(app, body).await;
    e.into_response()
}

/// The host name of a `Host` or origin authority (`name:port`, `[v6]:port`).
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// `localhost` (and names below it) or a loopback address.
fn is_loopback_host(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn auth(State(app): State<App>, req: Request, next: Next) -> Response {
    let public = matches!(req.uri().path(), "/" | "/health" | "/v1/health");
    if app.keys.is_empty() || public {
        return next.run(req).await;
    }
    let h = req.headers();
    let given = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim());
    // Every key is compared, each in time independent of where it differs.
    let known = given.is_some_and(|k| {
        app.keys.iter().fold(false, |found, a| {
            same_key(k.as_bytes(), a.as_bytes()) | found
        })
    });
    if known {
        return next.run(req).await;
    }
    let e = ApiError::new(
        401,
        "authentication_error",
        "Invalid API Key: send it as Authorization: Bearer KEY or X-Api-Key",
    );
    refuse(&app, req.into_body(), e).await
}

/// Whether `given` equals `key`, in a time that depends on their lengths only (not on where
/// they first differ).
fn same_key(given: &[u8], key: &[u8]) -> bool {
    let n = given.len().max(key.len());
    let mut diff = u8::from(given.len() != key.len());
    for i in 0..n {
        let (a, b) = (given.get(i).copied(), key.get(i).copied());
        diff |= a.unwrap_or(0) ^ b.unwrap_or(0xff);
    }
    std::hint::black_box(diff) == 0
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn health(State(app): State<App>) -> Response {
    match app.pool.stopped() {
        (0, _) => Json(json!({"status": "ok"})).into_response(),
        (dead, n) => ApiError::new(
            503,
            "unavailable_error",
            format!("{dead} of {n} slots have stopped (see the server's log); restart the server"),
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not_found_error", "File Not Found")
}

async fn models(State(app): State<App>) -> Json<Value> {
    let mut input = vec!["text"];
    if app.vision {
        input.push("image");
    }
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model,
            "object": "model",
            "created": now(),
            "owned_by": "cmrm",
            "meta": {"n_ctx": app.n_ctx},
            "architecture": {"input_modalities": input, "output_modalities": ["text"]},
        }]
    }))
}

async fn metrics(State(app): State<App>) -> Response {
    if !app.metrics_endpoint {
        return ApiError::new(
            501,
            "not_supported_error",
            "This server does not serve metrics: start it with --metrics",
        )
        .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics
            .render(app.pool.waiting(), app.pool.batch_stats()),
    )
        .into_response()
}

/// Cancels the answer when dropped: the handler (or its event stream) is dropped when the
/// client goes away.
struct CancelOnDrop(Option<Canceller>);

impl CancelOnDrop {
    /// The answer is complete: nothing to cancel any more (the slot may already serve another
    /// request).
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.cancel();
        }
    }
}

async fn chat(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let _ = headers;
    match chat_inner(&app, body).await {
        Ok(r) => {
            app.metrics.ok.fetch_add(1, Ordering::Relaxed);
            r
        }
        Err(e) => {
            app.metrics.errors.fetch_add(1, Ordering::Relaxed);
            e.into_response()
        }
    }
}

/// A request's body, read within --timeout and at most --max-request-bytes long (408, 413).
pub(super) async fn read_body(app: &Shared, body: Body) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(
        app.timeout,
        axum::body::to_bytes(body, app.max_request_bytes),
    )
    .await
    {
        Err(_) => Err(ApiError::new(
            408,
            "invalid_request_error",
            "the request body did not arrive in time (--timeout)",
        )),
        Ok(Err(_)) => Err(ApiError::new(
            413,
            "invalid_request_error",
            format!(
                "the request is larger than {} bytes (--max-request-bytes)",
                app.max_request_bytes
            ),
        )),
        Ok(Ok(b)) => Ok(b),
    }
}

/// Reads a refused request's body to its end and drops it, chunk by chunk (at most
/// --max-request-bytes, for 2 s at most), so that the client reads the refusal: a connection
/// closed with bytes unread is reset, and a client still sending its body would see the reset
/// instead of the 401, 403, 415 or 503.
async fn discard_body(app: &Shared, body: Body) {
    let mut chunks = body.into_data_stream();
    let mut left = app.max_request_bytes;
    let drain = async {
        while let Some(Ok(chunk)) = chunks.next().await {
            match left.checked_sub(chunk.len()) {
                Some(l) => left = l,
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(app.timeout.min(Duration::from_secs(2)), drain).await;
}

/// A place for a request, then its body. A place first: a request the server will refuse
/// costs no reading, parsing or image decoding (its body is drained, so that the client reads
/// the 503), and the memory requests hold is bounded by the places.
pub(super) async fn admit_and_read(app: &Shared, body: Body) -> Result<(Place, Bytes), ApiError> {
    match app.pool.admit() {
        Ok(place) => Ok((place, read_body(app, body).await?)),
        Err(e) => {
            discard_body(app, body).await;
            Err(e)
        }
    }
}

async fn chat_inner(app: &App, body: Body) -> Result<Response, ApiError> {
    let (place, bytes) = admit_and_read(app, body).await?;
    let parsed = parse(&bytes, &app.sampling, &app.steering, &app.limits)?;
    drop(bytes);
    let has_image = parsed
        .messages
        .iter()
        .any(|m| m.pieces.iter().any(|p| matches!(p, Piece::Image(_))));
    if has_image && !app.vision {
        return Err(ApiError::invalid(
            "image input is not supported: the server runs without --mmproj",
        ));
    }
    let shared = app.clone();
    let tool_format = app.engine.template().tool_format();
    let prepared = tokio::task::spawn_blocking(move || {
        prepare(
            parsed,
            &shared.limits,
            &shared.metrics.images_decoded,
            tool_format,
        )
    })
    .await
    .map_err(|_| ApiError::new(500, "server_error", "preparing the request failed"))??;
    let keys = conversation_keys(&prepared.history, &prepared.turn.text);
    let model = prepared.model.clone().unwrap_or_else(|| app.model.clone());
    let (stream, include_usage) = (prepared.stream, prepared.include_usage);
    let logprobs = prepared.options.logprobs.is_some();
    let id = format!("chatcmpl-{}", random_id());
    let calls = prepared
        .tool_format
        .map(|f| ToolStream::new(f, format!("call_{}", random_id())));
    let lease = app.pool.acquire(place, &keys, app.timeout).await?;
    let (tx, mut rx) = mpsc::channel(EVENTS);
    let guard = CancelOnDrop(Some(lease.canceller()));
    app.pool.submit(lease, prepared, tx)?;
    let created = now();
    if !stream {
        loop {
            match rx.recv().await {
                Some(Event::Piece(..)) => {}
                Some(Event::Done(out, lease)) => {
                    guard.disarm();
                    drop(lease);
                    let out = (*out)?;
                    let answer = Answer::of(&out.text, calls);
                    return Ok(
                        Json(completion(&id, created, &model, &out, &answer)).into_response()
                    );
                }
                None => return Err(ApiError::new(500, "server_error", "the slot stopped")),
            }
        }
    }
    // Errors before the first piece are plain JSON errors with their status.
    let first = match rx.recv().await {
        Some(Event::Done(out, lease)) => match *out {
            Err(e) => {
                guard.disarm();
                drop(lease);
                return Err(e);
            }
            Ok(o) => Event::Done(Box::new(Ok(o)), lease),
        },
        Some(e) => e,
        None => return Err(ApiError::new(500, "server_error", "the slot stopped")),
    };
    let ctx = ChunkCtx {
        id,
        created,
        model,
        include_usage,
        logprobs,
        calls,
    };
    let head = stream::iter(vec![Ok::<_, Infallible>(
        Sse::default().data(
            ctx.chunk(json!({"role": "assistant", "content": null}), None)
                .to_string(),
        ),
    )]);
    let events = stream::unfold(
        (Some(first), rx, ctx, guard, false),
        |(pending, mut rx, mut ctx, guard, done)| async move {
            if done {
                return None;
            }
            let ev = match pending {
                Some(e) => Some(e),
                None => rx.recv().await,
            };
            let items: Vec<Sse> = match ev {
                Some(Event::Piece(p, probs)) => {
                    let mut deltas = ctx.deltas(Some(&p));
                    // The log-probabilities go with the piece's first delta, or alone while
                    // a tool call is held.
                    if ctx.logprobs && deltas.is_empty() {
                        deltas.push(json!({"content": ""}));
                    }
                    deltas
                        .into_iter()
                        .enumerate()
                        .map(|(i, d)| {
                            let mut chunk = ctx.chunk(d, None);
                            if ctx.logprobs && i == 0 {
                                chunk["choices"][0]["logprobs"] = logprobs_field(&probs);
                            }
                            Sse::default().data(chunk.to_string())
                        })
                        .collect()
                }
                Some(Event::Done(out, lease)) => {
                    guard.disarm();
                    drop(lease);
                    let mut v = Vec::new();
                    match *out {
                        Ok(o) => {
                            let rest = ctx.deltas(None);
                            for d in rest {
                                v.push(Sse::default().data(ctx.chunk(d, None).to_string()));
                            }
                            let called = ctx.calls.as_ref().is_some_and(|c| c.n_calls() > 0);
                            let reason = if called {
                                "tool_calls"
                            } else {
                                finish_reason(o.stop)
                            };
                            let mut last = ctx.chunk(json!({}), Some(reason));
                            last["cmrm"] = cmrm_field(&o.applied);
                            v.push(Sse::default().data(last.to_string()));
                            if ctx.include_usage {
                                let mut u = ctx.chunk(Value::Null, None);
                                u["choices"] = json!([]);
                                u["usage"] = serde_json::to_value(&o.usage).unwrap_or(Value::Null);
                                u["timings"] = timings(&o);
                                v.push(Sse::default().data(u.to_string()));
                            }
                            v.push(Sse::default().data("[DONE]"));
                        }
                        Err(e) => v.push(Sse::default().data(e.body().to_string())),
                    }
                    let items: Vec<Result<Sse, Infallible>> = v.into_iter().map(Ok).collect();
                    return Some((
                        stream::iter(items),
                        (None, rx, ctx, CancelOnDrop(None), true),
                    ));
                }
                None => return None,
            };
            let items: Vec<Result<Sse, Infallible>> = items.into_iter().map(Ok).collect();
            Some((stream::iter(items), (None, rx, ctx, guard, false)))
        },
    )
    .flatten();
    let body: std::pin::Pin<Box<dyn Stream<Item = Result<Sse, Infallible>> + Send>> =
        Box::pin(head.chain(events));
    let mut resp = axum::response::Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(30)))
        .into_response();
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

struct ChunkCtx {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// Chunks carry their tokens' log-probabilities.
    logprobs: bool,
    /// The reader of tool calls, when tools are offered.
    calls: Option<ToolStream>,
}

impl ChunkCtx {
    /// The deltas a piece of the answer gives (`None`: the end of the answer): its text, or
    /// the tool calls it completes.
    fn deltas(&mut self, piece: Option<&str>) -> Vec<Value> {
        let Some(s) = &mut self.calls else {
            return piece.map(|p| json!({"content": p})).into_iter().collect();
        };
        let first = s.n_calls();
        let events = match piece {
            Some(p) => s.push(p),
            None => s.finish(),
        };
        tool_deltas(events, first)
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": concat!("cmrm-", env!("CARGO_PKG_VERSION")),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }
}

fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::EndOfText | StopReason::StopString | StopReason::Cancelled => "stop",
        StopReason::Length | StopReason::ContextFull => "length",
    }
}

fn timings(o: &Outcome) -> Value {
    let n = o.usage.completion_tokens as f64;
    let p = (o.usage.prompt_tokens - o.usage.prompt_tokens_details.cached_tokens) as f64;
    json!({
        "cache_n": o.usage.prompt_tokens_details.cached_tokens,
        "prompt_n": p,
        "prompt_ms": o.prompt_ms,
        "prompt_per_second": if o.prompt_ms > 0.0 { p * 1e3 / o.prompt_ms } else { 0.0 },
        "predicted_n": o.usage.completion_tokens,
        "predicted_ms": o.gen_ms,
        "predicted_per_second": if o.gen_ms > 0.0 { n * 1e3 / o.gen_ms } else { 0.0 },
    })
}

/// Streamed deltas of `events`, the first call being the answer's call number `first`.
fn tool_deltas(events: Vec<ToolEvent>, first: usize) -> Vec<Value> {
    let mut index = first;
    events
        .into_iter()
        .map(|e| match e {
            ToolEvent::Text(t) => json!({"content": t}),
            ToolEvent::Call(c) => {
                let mut call = call_json(&c);
                call["index"] = json!(index);
                index += 1;
                json!({"tool_calls": [call]})
            }
        })
        .collect()
}

/// A tool call as OpenAI writes it.
fn call_json(c: &ToolCall) -> Value {
    json!({
        "id": c.id,
        "type": "function",
        "function": {"name": c.name, "arguments": c.arguments},
    })
}

/// A whole answer's text and tool calls.
struct Answer {
    text: Option<String>,
    calls: Vec<ToolCall>,
}

impl Answer {
    /// `text` read for tool calls when `calls` reads them.
    fn of(text: &str, calls: Option<ToolStream>) -> Self {
        let Some(mut s) = calls else {
            return Self {
                text: Some(text.to_string()),
                calls: Vec::new(),
            };
        };
        let mut events = s.push(text);
        events.extend(s.finish());
        let (out, calls) = split(events);
        Self {
            // OpenAI's content is null beside tool calls when there is no text.
            text: (calls.is_empty() || !out.is_empty()).then_some(out),
            calls,
        }
    }
}

fn completion(id: &str, created: u64, model: &str, o: &Outcome, answer: &Answer) -> Value {
    let mut message = json!({"role": "assistant", "content": answer.text});
    if !answer.calls.is_empty() {
        message["tool_calls"] = answer.calls.iter().map(call_json).collect();
    }
    let reason = if answer.calls.is_empty() {
        finish_reason(o.stop)
    } else {
        "tool_calls"
    };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": concat!("cmrm-", env!("CARGO_PKG_VERSION")),
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": o.logprobs.as_deref().map_or(Value::Null, logprobs_field),
            "finish_reason": reason,
        }],
        "usage": o.usage,
        "timings": timings(o),
        "cmrm": cmrm_field(&o.applied),
    })
}

/// OpenAI's `logprobs` object of a choice: each token with its text, bytes, log-probability
/// and the most likely tokens at its place.
fn logprobs_field(probs: &[TokenLogprob]) -> Value {
    let entry = |c: &TokenChoice| {
        json!({
            "token": String::from_utf8_lossy(&c.bytes),
            "logprob": c.logprob,
            "bytes": c.bytes,
        })
    };
    let content: Vec<Value> = probs
        .iter()
        .map(|p| {
            let mut e = entry(&p.chosen);
            e["top_logprobs"] = p.top.iter().map(entry).collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// What the answer applied, in the response's `cmrm` object.
fn cmrm_field(applied: &crate::session::Applied) -> Value {
    serde_json::to_value(applied).unwrap_or(Value::Null)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let chars = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let mut v = h.finish();
        for _ in 0..8 {
            out.push(chars[(v % 62) as usize] as char);
            v /= 62;
        }
    }
    out.truncate(32);
    out
}

#[cfg(test)]
mod tests {
    use super::{host_name, is_loopback_host, same_key};

    #[test]
    fn keys_compare_whole() {
        assert!(same_key(b"sk-test", b"sk-test"));
        assert!(!same_key(b"sk-tesT", b"sk-test"));
        assert!(!same_key(b"sk-test", b"sk-test2"));
        assert!(!same_key(b"", b"sk"));
        assert!(!same_key(b"sk\0", b"sk"));
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:8080",
            "localhost:1",
            "[::1]:80",
            "LOCALHOST",
            "a.localhost:9",
        ] {
            assert!(is_loopback_host(host_name(h)), "{h}");
        }
        for h in [
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "[::2]:80",
            "10.0.0.1",
        ] {
            assert!(!is_loopback_host(host_name(h)), "{h}");
        }
    }
}
