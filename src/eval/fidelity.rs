//! Fidelity: how close a condition brings the model to its own text-only behaviour, the
//! quantity CMRM exists to restore.

use std::collections::HashMap;

use serde::Serialize;

use super::journal::{by_condition, Keyed};
use super::judge::is_refusal;
use super::metrics::{kl, mean_ci, percent_ci, shared_prefix, wilson};
use super::{RunOutput, BASELINE};
use crate::math::{argmax, cosine, l2};

/// One item's fidelity under a condition, against the text-only run.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Fidelity {
    /// KL(p_text || p_cond) of the first answer token, nats.
    pub kl: f64,
    /// The most likely first token is the same.
    pub top1_agree: bool,
    /// Length of the greedy answer prefix shared with the text-only answer, tokens.
    pub shared_prefix: usize,
    /// Both answers refuse, or neither does (refusal-phrase judge).
    pub refusal_agree: bool,
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
        refusal_agree: is_refusal(&text.text) == is_refusal(&cond.text),
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

/// A per-item fidelity record (one JSONL line).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct FidelityRecord {
    /// Item id.
    pub id: String,
    /// Condition.
    pub condition: String,
    /// The comparison with the text-only run.
    #[serde(flatten)]
    pub fidelity: Fidelity,
    /// The condition's answer.
    pub response: String,
}

impl Keyed for FidelityRecord {
    fn key(&self) -> (String, String) {
        (self.id.clone(), self.condition.clone())
    }
}

/// Summaries of records per condition, in order of first appearance, each condition but
/// `image` with its paired KL reduction against `image` on the same items.
pub fn summarize_records(records: &[FidelityRecord]) -> Vec<FidelitySummary> {
    let baseline: HashMap<&str, f64> = records
        .iter()
        .filter(|r| r.condition == BASELINE)
        .map(|r| (r.id.as_str(), r.fidelity.kl))
        .collect();
    by_condition(records)
        .into_iter()
        .map(|(c, rs)| {
            let f: Vec<Fidelity> = rs.iter().map(|r| r.fidelity.clone()).collect();
            let mut s = summarize(&c, &f);
            let cuts: Vec<f64> = rs
                .iter()
                .filter_map(|r| Some(baseline.get(r.id.as_str())? - r.fidelity.kl))
                .collect();
            if c != BASELINE && !cuts.is_empty() {
                s.kl_cut_vs_image = Some(mean_ci(&cuts));
            }
            s
        })
        .collect()
}

/// A Markdown table of summaries.
pub fn table(s: &[FidelitySummary]) -> String {
    let mut out = String::from(
        "| condition | n | KL(text‖cond) nats | KL cut vs image (paired) | top-1 agree [95% CI] | shared prefix | refusal agree [95% CI] | mean cos | cos last layer |\n|---|---:|---|---|---|---|---|---:|---:|\n",
    );
    for r in s {
        let cm = r.cosine.iter().sum::<f64>() / r.cosine.len().max(1) as f64;
        let cut = r
            .kl_cut_vs_image
            .map_or("-".into(), |(m, h)| format!("{m:.3} ± {h:.3}"));
        out.push_str(&format!(
            "| {} | {} | {:.3} ± {:.3} | {} | {} | {:.2} ± {:.2} | {} | {:.3} | {:.3} |\n",
            r.condition,
            r.n,
            r.kl.0,
            r.kl.1,
            cut,
            percent_ci(r.top1_agree.0, r.top1_agree.1),
            r.shared_prefix.0,
            r.shared_prefix.1,
            percent_ci(r.refusal_agree.0, r.refusal_agree.1),
            cm,
            r.cosine.last().copied().unwrap_or(f64::NAN)
        ));
    }
    out
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
    /// Mean of `KL(image) - KL(this)` over the same items and its 95% half-width: how much
    /// of the image's shift this condition removes (absent for `image` and without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_cut_vs_image: Option<(f64, f64)>,
    /// First-token agreement rate with its Wilson 95% interval.
    pub top1_agree: (f64, (f64, f64)),
    /// Mean shared greedy prefix and its 95% half-width.
    pub shared_prefix: (f64, f64),
    /// Refusal-decision agreement with the text-only run, with its Wilson 95% interval.
    pub refusal_agree: (f64, (f64, f64)),
    /// Mean cosine to the text-only state per layer.
    pub cosine: Vec<f64>,
    /// Mean L2 distance to the text-only state per layer.
    pub l2: Vec<f64>,
}

/// Aggregates per-item fidelity.
pub fn summarize(condition: &str, items: &[Fidelity]) -> FidelitySummary {
    let n = items.len();
    let agree = items.iter().filter(|f| f.top1_agree).count();
    let refusal = items.iter().filter(|f| f.refusal_agree).count();
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
        kl_cut_vs_image: None,
        top1_agree: (agree as f64 / n.max(1) as f64, wilson(agree, n)),
        shared_prefix: mean_ci(
            &items
                .iter()
                .map(|f| f.shared_prefix as f64)
                .collect::<Vec<_>>(),
        ),
        refusal_agree: (refusal as f64 / n.max(1) as f64, wilson(refusal, n)),
        cosine: per_layer(&|f| &f.cosine),
        l2: per_layer(&|f| &f.l2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, condition: &str, kl: f64) -> FidelityRecord {
        FidelityRecord {
            id: id.into(),
            condition: condition.into(),
            fidelity: Fidelity {
                kl,
                top1_agree: true,
                shared_prefix: 1,
                refusal_agree: true,
                cosine: vec![1.0],
                l2: vec![0.0],
            },
            response: String::new(),
        }
    }

    #[test]
    fn kl_cut_is_paired_with_the_image_run_of_the_same_item() {
        let rs = [
            rec("a", "image", 0.5),
            rec("b", "image", 0.3),
            rec("a", "cmrm@1", 0.2),
            rec("b", "cmrm@1", 0.2),
            rec("c", "cmrm@1", 9.0),
        ];
        let s = summarize_records(&rs);
        assert_eq!(s[0].kl_cut_vs_image, None);
        let (mean, half) = s[1].kl_cut_vs_image.expect("paired");
        // Item c has no image run and is left out of the pairing: cuts 0.3 and 0.1.
        assert!((mean - 0.2).abs() < 1e-12, "{mean}");
        assert!(
            (half - 1.96 * (0.02f64 / 2.0).sqrt()).abs() < 1e-12,
            "{half}"
        );
        assert!(table(&s).contains("| 0.200 ± 0.196 |"));
    }
}
