//! llama-server's `GET /props` (what the server runs and the settings a request starts from,
//! for clients and llama.cpp's own web UI that read them before they ask) and `GET /slots`
//! (what each slot is doing), both read-only.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::http::App;
use crate::settings::SteerOverride;

/// `GET /props`: llama-server's fields that apply to cmrm (`default_generation_settings`,
/// `total_slots`, `model_path`, `chat_template`, `modalities`, `build_info`) and `cmrm`, the
/// CMRM settings every request starts from.
pub(super) async fn props(State(app): State<App>) -> Json<Value> {
    let s = &app.sampling;
    let model = app.engine.model();
    let tools = app.engine.template().tool_format();
    Json(json!({
        "default_generation_settings": {
            "n_ctx": app.n_ctx,
            "params": {
                "n_predict": app.limits.default_max_tokens.unwrap_or(app.limits.max_tokens),
                "seed": s.seed,
                "temperature": s.temp,
                "top_k": s.top_k,
                "top_p": s.top_p,
                "min_p": s.min_p,
                "typical_p": s.typical_p,
                "repeat_penalty": s.repeat_penalty,
                "repeat_last_n": s.penalty_last_n,
                "presence_penalty": s.presence_penalty,
                "frequency_penalty": s.frequency_penalty,
            },
        },
        // (running or stopped: all of them)
        "total_slots": app.pool.stopped().1,
        "model_path": app.engine.options().model.display().to_string(),
        "model_alias": app.model,
        "chat_template": model.chat_template().unwrap_or_default(),
        "chat_template_caps": {
            "supports_tools": tools.is_some(),
            "supports_tool_calls": tools.is_some(),
            "tool_call_format": tools.map(|f| f.name()),
        },
        "modalities": {"vision": app.vision, "audio": false},
        "build_info": format!(
            "cmrm {} (llama.cpp vendored by llama-cpp-sys-2 0.1.160)",
            env!("CARGO_PKG_VERSION")
        ),
        "cmrm": steering(&app.steering),
    }))
}

/// The server's CMRM settings as the `cmrm` request object spells them (null: the vector
/// file's recommendation or the built-in default).
fn steering(s: &SteerOverride) -> Value {
    let text = |v: Option<String>| v.map_or(Value::Null, Value::String);
    json!({
        "enabled": s.enabled,
        "sample": s.sample,
        "corruption": text(s.corruption.as_ref().map(ToString::to_string)),
        "alpha": s.alpha,
        "apply": text(s.apply.map(|a| a.to_string())),
        "layers": text(s.layers.map(|l| l.to_string())),
        "positions": text(s.positions.map(|p| p.to_string())),
        "text_only": s.text_only,
    })
}

/// `GET /slots`: one object per slot, as llama-server's (`id`, `n_ctx`, `is_processing`), with
/// whether its thread runs and how many requests it took; no request content is shown.
pub(super) async fn slots(State(app): State<App>) -> Json<Value> {
    let slots: Vec<Value> = app
        .pool
        .slots()
        .into_iter()
        .map(|s| {
            json!({
                "id": s.id,
                "n_ctx": app.n_ctx,
                "is_processing": s.busy,
                "alive": s.alive,
                "requests": s.requests,
                "cached_messages": s.cached_messages,
            })
        })
        .collect();
    Json(Value::Array(slots))
}
