//! JSONL data sets: anchors for calibration and items for evaluation share one line format,
//! `{"id"?, "prompt", "image"?, "category"?, "reference"?, "choices"?, "answer"?}`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{ensure, Context as _, Result};
use serde::{Deserialize, Serialize};

/// One line of a data set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Item {
    /// Stable identifier (default: the line number).
    #[serde(default)]
    pub id: String,
    /// The user's text.
    pub prompt: String,
    /// An image: a path (relative to the JSONL file) or a data URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Free-form category (e.g. a risk area).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// A reference answer (utility: perplexity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Answer choices (multiple choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    /// Index of the right choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<usize>,
}

/// Reads a JSONL data set; blank lines are skipped; relative image paths are made relative to
/// the file; missing ids become `line-N`.
pub fn read_jsonl(path: &Path) -> Result<Vec<Item>> {
    let f = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}: cannot read", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut item: Item = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: expected a JSON object with at least \"prompt\"",
                path.display(),
                i + 1
            )
        })?;
        if item.id.is_empty() {
            item.id = format!("line-{}", i + 1);
        }
        if let Some(img) = &item.image {
            if !img.starts_with("data:") && Path::new(img).is_relative() {
                item.image = Some(dir.join(img).to_string_lossy().into_owned());
            }
        }
        out.push(item);
    }
    ensure!(!out.is_empty(), "{}: no items", path.display());
    Ok(out)
}
