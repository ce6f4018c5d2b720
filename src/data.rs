//! JSONL data sets: anchors for calibration and items for evaluation share one line format,
//! `{"id"?, "prompt", "image"?, "category"?, "reference"?, "choices"?, "answer"?}`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One line of a data set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// Stable identifier (default: `line-N`).
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

/// Parses one JSONL line (`line` is 1-based, for messages); relative image paths are made
/// relative to `dir`, a missing id becomes `line-N`.
pub fn parse_line(path: &Path, line: usize, text: &str, dir: &Path) -> Result<Item> {
    let mut item: Item = serde_json::from_str(text).map_err(|e| {
        Error::data(
            path,
            Some(line),
            format!("{e}; each line must be a JSON object with at least \"prompt\""),
        )
    })?;
    if item.id.is_empty() {
        item.id = format!("line-{line}");
    }
    if let (Some(choices), Some(answer)) = (&item.choices, item.answer) {
        if answer >= choices.len() {
            return Err(Error::data(
                path,
                Some(line),
                format!(
                    "\"answer\" is {answer} but there are {} choices (answers count from 0)",
                    choices.len()
                ),
            ));
        }
    }
    if let Some(img) = &item.image {
        if !img.starts_with("data:") && Path::new(img).is_relative() {
            item.image = Some(dir.join(img).to_string_lossy().into_owned());
        }
    }
    Ok(item)
}

/// Largest data set read, in bytes.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Reads a JSONL data set; blank lines are skipped. Every problem names the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Item>> {
    let bytes = read_bounded(path)?;
    parse_jsonl(&bytes, path)
}

/// Reads a JSONL file of records of another shape (e.g. labelled judge answers); every
/// problem names the file and line.
pub fn read_records<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let bytes = read_bounded(path)?;
    lines(&bytes, path)?
        .into_iter()
        .map(|(line, text)| {
            serde_json::from_str(text).map_err(|e| Error::data(path, Some(line), e.to_string()))
        })
        .collect()
}

/// The non-blank lines of a JSONL file's bytes with their 1-based numbers; a line that is not
/// UTF-8 is an error naming it.
fn lines<'b>(bytes: &'b [u8], path: &Path) -> Result<Vec<(usize, &'b str)>> {
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let text = std::str::from_utf8(raw)
            .map_err(|_| Error::data(path, Some(i + 1), "not UTF-8 text"))?;
        if !text.trim().is_empty() {
            out.push((i + 1, text));
        }
    }
    Ok(out)
}

/// The bytes of a data file: not a folder, not over [`MAX_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        return Err(Error::data(path, None, "is a folder, not a JSONL file"));
    }
    if let Ok(m) = std::fs::metadata(path) {
        if m.len() > MAX_FILE_BYTES {
            return Err(Error::data(
                path,
                None,
                format!(
                    "is larger than {} MiB; split it into smaller files",
                    MAX_FILE_BYTES >> 20
                ),
            ));
        }
    }
    std::fs::read(path).map_err(|e| Error::io(path, "read", e))
}

/// Parses the bytes of a JSONL data set read from `path` (named in errors; relative image
/// paths are made relative to its folder).
pub fn parse_jsonl(bytes: &[u8], path: &Path) -> Result<Vec<Item>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (line, text) in lines(bytes, path)? {
        let item = parse_line(path, line, text, dir)?;
        if !ids.insert(item.id.clone()) {
            return Err(Error::data(
                path,
                Some(line),
                format!("the id {:?} is used twice; ids must be unique", item.id),
            ));
        }
        out.push(item);
    }
    if out.is_empty() {
        return Err(Error::data(path, None, "no items (the file is empty)"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_named_with_their_number() {
        let p = Path::new("set.jsonl");
        let e = parse_line(p, 7, r#"{"prompt": 3}"#, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("set.jsonl:7:"), "{e}");
        let e = parse_line(p, 2, r#"{"image": "a.png"}"#, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("prompt"), "{e}");
        let e = parse_line(
            p,
            3,
            r#"{"prompt": "x", "choices": ["a"], "answer": 1}"#,
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("set.jsonl:3") && e.contains("answer"), "{e}");
        let ok = parse_line(p, 4, r#"{"prompt": "x", "image": "a.png"}"#, Path::new("d")).unwrap();
        assert_eq!(
            (ok.id.as_str(), ok.image.as_deref()),
            ("line-4", Some("d/a.png"))
        );
    }
}
