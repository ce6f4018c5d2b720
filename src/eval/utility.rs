//! Utility on benign data: fluency (perplexity of reference answers), multiple-choice
//! accuracy, and over-refusal.

use serde::{Deserialize, Serialize};

use super::journal::{by_condition, Keyed};
use super::metrics::{percent_ci, wilson};

/// One benign item under one condition.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UtilityRecord {
    /// Item id.
    pub id: String,
    /// Condition.
    pub condition: String,
    /// The greedy answer.
    pub response: String,
    /// Whether the answer contains a refusal phrase (an over-refusal on benign data).
    pub refused: bool,
    /// Sum of the reference answer's token log-probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_logprob: Option<f64>,
    /// Reference answer tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_tokens: Option<usize>,
    /// The choice with the highest log-likelihood.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<usize>,
    /// Whether it is the right one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    /// Wall time, ms.
    pub ms: f64,
}

impl Keyed for UtilityRecord {
    fn key(&self) -> (String, String) {
        (self.id.clone(), self.condition.clone())
    }
}

/// Utility of one condition.
#[derive(Clone, Debug, Serialize)]
pub struct UtilitySummary {
    /// Condition.
    pub condition: String,
    /// Items.
    pub n: usize,
    /// Over-refusal rate and its Wilson 95% interval.
    pub over_refusal: (f64, (f64, f64)),
    /// Perplexity of the reference answers (token-weighted), and how many items had one.
    pub perplexity: (f64, usize),
    /// Multiple-choice accuracy with its Wilson 95% interval, and how many items had choices
    /// (NaN, serialized as null, when none had).
    pub accuracy: (f64, (f64, f64), usize),
}

impl UtilitySummary {
    /// The perplexity as a table cell: "-" when no item had a reference answer.
    pub fn perplexity_cell(&self) -> String {
        if self.perplexity.1 == 0 {
            "-".into()
        } else {
            format!("{:.2}", self.perplexity.0)
        }
    }

    /// The multiple-choice accuracy with its interval as a table cell: "-" when no item had
    /// choices (a rate over nothing is not 0%).
    pub fn accuracy_cell(&self) -> String {
        let (rate, ci, n) = self.accuracy;
        if n == 0 {
            "-".into()
        } else {
            percent_ci(rate, ci)
        }
    }
}

/// Summaries per condition, in order of first appearance.
pub fn summarize(records: &[UtilityRecord]) -> Vec<UtilitySummary> {
    by_condition(records)
        .into_iter()
        .map(|(c, rs)| {
            let n = rs.len();
            let refused = rs.iter().filter(|r| r.refused).count();
            let (lp, toks, n_ref) = rs.iter().fold((0.0, 0usize, 0usize), |acc, r| {
                match (r.ref_logprob, r.ref_tokens) {
                    (Some(lp), Some(t)) => (acc.0 + lp, acc.1 + t, acc.2 + 1),
                    _ => acc,
                }
            });
            let mc: Vec<bool> = rs.iter().filter_map(|r| r.correct).collect();
            let right = mc.iter().filter(|c| **c).count();
            UtilitySummary {
                condition: c,
                n,
                over_refusal: (refused as f64 / n.max(1) as f64, wilson(refused, n)),
                perplexity: (
                    if toks == 0 {
                        f64::NAN
                    } else {
                        (-lp / toks as f64).exp()
                    },
                    n_ref,
                ),
                accuracy: (
                    if mc.is_empty() {
                        f64::NAN
                    } else {
                        right as f64 / mc.len() as f64
                    },
                    wilson(right, mc.len()),
                    mc.len(),
                ),
            }
        })
        .collect()
}

/// A Markdown table of summaries.
pub fn table(summaries: &[UtilitySummary]) -> String {
    let mut s = String::from(
        "| condition | n | over-refusal [95% CI] | perplexity (refs) | MC accuracy [95% CI] (items) |\n|---|---:|---|---:|---|\n",
    );
    for r in summaries {
        s.push_str(&format!(
            "| {} | {} | {} | {} ({}) | {} ({}) |\n",
            r.condition,
            r.n,
            percent_ci(r.over_refusal.0, r.over_refusal.1),
            r.perplexity_cell(),
            r.perplexity.1,
            r.accuracy_cell(),
            r.accuracy.2
        ));
    }
    s.push('\n');
    s.push_str(&super::judge::refusal_judge_note());
    s
}

/// Over-refusal per item category (rows, in order of first appearance in `items`) and
/// condition (columns), each `rate [95% CI] (k/n)`, as a Markdown table; empty when no item
/// has a category.
pub fn category_table(records: &[UtilityRecord], items: &[crate::data::Item]) -> String {
    let category: std::collections::HashMap<&str, &str> = items
        .iter()
        .filter_map(|i| Some((i.id.as_str(), i.category.as_deref()?)))
        .collect();
    if category.is_empty() {
        return String::new();
    }
    let mut categories: Vec<&str> = Vec::new();
    for i in items {
        if let Some(c) = i.category.as_deref() {
            if !categories.contains(&c) {
                categories.push(c);
            }
        }
    }
    let conditions = by_condition(records);
    let mut s = String::from("| category |");
    for (c, _) in &conditions {
        s.push_str(&format!(" {c} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(conditions.len()));
    s.push('\n');
    for cat in categories {
        s.push_str(&format!("| {cat} |"));
        for (_, rs) in &conditions {
            let of_cat: Vec<&&UtilityRecord> = rs
                .iter()
                .filter(|r| category.get(r.id.as_str()) == Some(&cat))
                .collect();
            let n = of_cat.len();
            let k = of_cat.iter().filter(|r| r.refused).count();
            s.push_str(&if n == 0 {
                " - |".to_string()
            } else {
                format!(
                    " {} ({k}/{n}) |",
                    percent_ci(k as f64 / n as f64, wilson(k, n))
                )
            });
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, correct: Option<bool>, ref_lp: Option<f64>) -> UtilityRecord {
        UtilityRecord {
            id: id.into(),
            condition: "image".into(),
            response: "Sure.".into(),
            refused: false,
            ref_logprob: ref_lp,
            ref_tokens: ref_lp.map(|_| 2),
            choice: correct.map(|_| 0),
            correct,
            ms: 1.0,
        }
    }

    #[test]
    fn metrics_without_items_show_as_missing_not_zero() {
        let s = summarize(&[rec("a", None, None), rec("b", None, None)]);
        assert!(s[0].accuracy.0.is_nan() && s[0].accuracy.2 == 0);
        assert_eq!(
            (s[0].accuracy_cell(), s[0].perplexity_cell()),
            ("-".into(), "-".into())
        );

        let s = summarize(&[
            rec("a", Some(true), Some(-2.0)),
            rec("b", Some(false), None),
        ]);
        assert_eq!(s[0].accuracy.2, 2);
        assert!(s[0].accuracy_cell().starts_with("50.0% ["));
        // exp(2 nats / 2 tokens) = e.
        assert_eq!(s[0].perplexity_cell(), "2.72");
    }

    #[test]
    fn over_refusal_is_counted_per_category_and_condition() {
        let item = |id: &str, cat: Option<&str>| crate::data::Item {
            id: id.into(),
            prompt: "p".into(),
            image: None,
            category: cat.map(Into::into),
            reference: None,
            choices: None,
            answer: None,
        };
        let items = [
            item("a", Some("privacy")),
            item("b", Some("history")),
            item("c", Some("privacy")),
        ];
        let mut records = vec![
            rec("a", None, None),
            rec("b", None, None),
            rec("c", None, None),
        ];
        records[0].refused = true;
        let mut steered = records.clone();
        for r in &mut steered {
            r.condition = "cmrm".into();
            r.refused = true;
        }
        records.extend(steered);
        let t = category_table(&records, &items);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "| category | image | cmrm |");
        assert!(lines[2].starts_with("| privacy | 50.0% ["), "{t}");
        assert!(
            lines[2].contains("(1/2) |") && lines[2].ends_with("(2/2) |"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("| history | 0.0% [") && lines[3].ends_with("(1/1) |"),
            "{t}"
        );
        assert_eq!(category_table(&records, &[item("a", None)]), "");
    }
}
