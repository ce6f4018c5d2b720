//! Counters for `GET /metrics`, in Prometheus' text format: llama-server's `llamacpp:*` names
//! where it has them, `cmrm:*` for what CMRM adds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::ffi::BatchStats;
use crate::session::Generation;

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    /// Requests answered (HTTP 200).
    pub ok: AtomicU64,
    /// Requests refused or failed (4xx, 5xx).
    pub errors: AtomicU64,
    /// Requests the client gave up.
    pub cancelled: AtomicU64,
    /// Prompt tokens evaluated (cached ones excluded).
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens reused from a slot's cache.
    pub prompt_tokens_cached: AtomicU64,
    /// Tokens generated.
    pub tokens_predicted: AtomicU64,
    /// Prompt evaluation time, microseconds.
    pub prompt_us: AtomicU64,
    /// Generation time, microseconds.
    pub predicted_us: AtomicU64,
    /// Images evaluated.
    pub images: AtomicU64,
    /// Answers steered with dataset vectors.
    pub steered_dataset: AtomicU64,
    /// Answers steered with their own (sample-level) shift.
    pub steered_sample: AtomicU64,
    /// Answers not steered.
    pub unsteered: AtomicU64,
    /// Answers stopped because their client took no piece for --timeout.
    pub stalled: AtomicU64,
    /// Requests a slot panicked on (answered 500, the slot reset).
    pub panics: AtomicU64,
    /// Images decoded for requests (after their admission).
    pub images_decoded: AtomicU64,
    /// Slots answering now.
    pub busy: AtomicUsize,
}

impl Metrics {
    /// Counts one finished generation.
    pub fn record(&self, g: &Generation) {
        let add = |c: &AtomicU64, v: u64| c.fetch_add(v, Ordering::Relaxed);
        add(
            &self.prompt_tokens,
            (g.prompt_tokens - g.cached_tokens) as u64,
        );
        add(&self.prompt_tokens_cached, g.cached_tokens as u64);
        add(&self.tokens_predicted, g.tokens.len() as u64);
        add(&self.prompt_us, (g.prompt_ms * 1e3) as u64);
        add(&self.predicted_us, (g.gen_ms * 1e3) as u64);
        add(&self.images, g.images as u64);
        let steered = match (g.steering.applied, g.steering.source.as_deref()) {
            (true, Some("sample")) => &self.steered_sample,
            (true, _) => &self.steered_dataset,
            (false, _) => &self.unsteered,
        };
        add(steered, 1);
    }

    /// The Prometheus text exposition, with the queue's current depth and what the batched
    /// decoding has done.
    pub fn render(&self, waiting: usize, batch: Option<BatchStats>) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let secs = |c: &AtomicU64| get(c) as f64 / 1e6;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "llamacpp:prompt_tokens_total",
            "counter",
            "Prompt tokens processed (cached ones excluded).",
            get(&self.prompt_tokens).to_string(),
        );
        metric(
            "llamacpp:prompt_tokens_cached_total",
            "counter",
            "Prompt tokens reused from a slot's cache.",
            get(&self.prompt_tokens_cached).to_string(),
        );
        metric(
            "llamacpp:prompt_seconds_total",
            "counter",
            "Prompt processing time.",
            format!("{:.6}", secs(&self.prompt_us)),
        );
        metric(
            "llamacpp:tokens_predicted_total",
            "counter",
            "Generated tokens.",
            get(&self.tokens_predicted).to_string(),
        );
        metric(
            "llamacpp:tokens_predicted_seconds_total",
            "counter",
            "Generation time.",
            format!("{:.6}", secs(&self.predicted_us)),
        );
        metric(
            "llamacpp:requests_processing",
            "gauge",
            "Requests being answered (busy slots).",
            self.busy.load(Ordering::Relaxed).to_string(),
        );
        metric(
            "llamacpp:requests_deferred",
            "gauge",
            "Requests waiting for a slot (queue depth).",
            waiting.to_string(),
        );
        metric(
            "cmrm:requests_ok_total",
            "counter",
            "Requests answered.",
            get(&self.ok).to_string(),
        );
        metric(
            "cmrm:requests_error_total",
            "counter",
            "Requests refused or failed.",
            get(&self.errors).to_string(),
        );
        metric(
            "cmrm:requests_cancelled_total",
            "counter",
            "Requests given up by their client.",
            get(&self.cancelled).to_string(),
        );
        metric(
            "cmrm:requests_stalled_total",
            "counter",
            "Answers stopped because the client read nothing for --timeout.",
            get(&self.stalled).to_string(),
        );
        metric(
            "cmrm:slot_panics_total",
            "counter",
            "Requests a slot failed on with a panic (the slot was reset).",
            get(&self.panics).to_string(),
        );
        metric(
            "cmrm:images_decoded_total",
            "counter",
            "Request images decoded (only requests holding a place decode theirs).",
            get(&self.images_decoded).to_string(),
        );
        metric(
            "cmrm:images_total",
            "counter",
            "Images evaluated.",
            get(&self.images).to_string(),
        );
        if let Some(b) = batch {
            let mean = if b.steps > 0 {
                b.sequences as f64 / b.steps as f64
            } else {
                0.0
            };
            for (name, kind, help, value) in [
                (
                    "cmrm:batch_steps_total",
                    "counter",
                    "Batched decode steps.",
                    b.steps.to_string(),
                ),
                (
                    "cmrm:batch_tokens_total",
                    "counter",
                    "Tokens decoded in batched steps.",
                    b.tokens.to_string(),
                ),
                (
                    "cmrm:batch_sequences_mean",
                    "gauge",
                    "Mean sequences per batched step.",
                    format!("{mean:.3}"),
                ),
                (
                    "cmrm:batch_sequences_last",
                    "gauge",
                    "Sequences in the latest batched step.",
                    b.last_batch.to_string(),
                ),
                (
                    "cmrm:batch_sequences_max",
                    "gauge",
                    "Most sequences one batched step carried.",
                    b.max_batch.to_string(),
                ),
                (
                    "cmrm:batch_pending",
                    "gauge",
                    "Decodes waiting for or in a batched step (sequences in flight).",
                    b.pending.to_string(),
                ),
            ] {
                metric(name, kind, help, value);
            }
        }
        out.push_str("# HELP cmrm:steered_requests_total Answers by the CMRM applied.\n# TYPE cmrm:steered_requests_total counter\n");
        out.push_str(&format!(
            "cmrm:steered_requests_total{{source=\"dataset\"}} {}\ncmrm:steered_requests_total{{source=\"sample\"}} {}\ncmrm:steered_requests_total{{source=\"none\"}} {}\n",
            get(&self.steered_dataset),
            get(&self.steered_sample),
            get(&self.unsteered)
        ));
        out
    }
}
