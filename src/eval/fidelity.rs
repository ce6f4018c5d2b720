//! Fidelity: how close a condition brings the model to its own text-only behaviour, the
//! quantity CMRM exists to restore.

use serde::Serialize;

use super::metrics::{argmax, cosine, kl, l2, mean_ci, shared_prefix, wilson};
use super::RunOutput;

/// One item's fidelity under a condition, against the text-only run.
#[derive(Clone, Debug, Serialize)]
pub struct Fidelity {
    /// KL(p_text || p_cond) of the first answer token, nats.
    pub kl: f64,
    /// The most likely first token is the same.
    pub top1_agree: bool,
    /// Length of the greedy answer prefix shared with the text-only answer, tokens.
    pub shared_prefix: usize,
    /// Per-layer cosine similarity of the last-prompt-token state to the text-only one.
    pub cosine: Vec<f64>,
    /// Per-layer L2 distance to the text-only state.
    pub l2: Vec<f64>,
}

/// Compares a run with the text-only run of the same item.
pub fn compare(text: &RunOutput, cond: &RunOutput) -> Fidelity {
    Fidelity {
        kl: kl(&text.first_logprobs, &cond.first_logprobs),
        top1_agree: argmax(&text.first_logprobs) == argmax(&cond.first_logprobs),
        shared_prefix: shared_prefix(&text.tokens, &cond.tokens),
        cosine: text
            .states
            .iter()
            .zip(&cond.states)
            .map(|(a, b)| cosine(a, b))
            .collect(),
        l2: text
            .states
            .iter()
            .zip(&cond.states)
            .map(|(a, b)| l2(a, b))
            .collect(),
    }
}

/// Fidelity of a condition over a data set.
#[derive(Clone, Debug, Serialize)]
pub struct FidelitySummary {
    /// Condition name.
    pub condition: String,
    /// Items.
    pub n: usize,
    /// Mean first-token KL and its 95% half-width.
    pub kl: (f64, f64),
    /// First-token agreement rate with its Wilson 95% interval.
    pub top1_agree: (f64, (f64, f64)),
    /// Mean shared greedy prefix and its 95% half-width.
    pub shared_prefix: (f64, f64),
    /// Mean cosine to the text-only state per layer.
    pub cosine: Vec<f64>,
    /// Mean L2 distance to the text-only state per layer.
    pub l2: Vec<f64>,
}

/// Aggregates per-item fidelity.
pub fn summarize(condition: &str, items: &[Fidelity]) -> FidelitySummary {
    let n = items.len();
    let agree = items.iter().filter(|f| f.top1_agree).count();
    let n_layer = items.first().map_or(0, |f| f.cosine.len());
    let per_layer = |get: &dyn Fn(&Fidelity) -> &Vec<f64>| -> Vec<f64> {
        (0..n_layer)
            .map(|il| items.iter().map(|f| get(f)[il]).sum::<f64>() / n.max(1) as f64)
            .collect()
    };
    FidelitySummary {
        condition: condition.to_string(),
        n,
        kl: mean_ci(&items.iter().map(|f| f.kl).collect::<Vec<_>>()),
        top1_agree: (agree as f64 / n.max(1) as f64, wilson(agree, n)),
        shared_prefix: mean_ci(
            &items
                .iter()
                .map(|f| f.shared_prefix as f64)
                .collect::<Vec<_>>(),
        ),
        cosine: per_layer(&|f| &f.cosine),
        l2: per_layer(&|f| &f.l2),
    }
}
