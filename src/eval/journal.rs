//! Per-sample results as JSONL, appended and flushed as they come, so that an interrupted
//! run keeps what it finished and a rerun skips it.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// A record with a key that identifies the work it stands for.
pub trait Keyed {
    /// `(item id, condition)`.
    fn key(&self) -> (String, String);
}

/// An append-only JSONL journal of records of type `T`.
pub struct Journal<T> {
    path: PathBuf,
    file: File,
    records: Vec<T>,
    done: HashSet<(String, String)>,
}

impl<T: Serialize + DeserializeOwned + Keyed> Journal<T> {
    /// Opens (or creates) `path`, reading what an earlier run finished; a torn last line
    /// (a run killed mid-write) is cut off.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create the folder", e))?;
        }
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| Error::io(path, "read", e))?;
        }
        // A line cut by a kill (no newline at its end) is dropped and redone.
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete != bytes.len() {
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(complete as u64))
                .map_err(|e| Error::io(path, "write", e))?;
        }
        let mut records = Vec::new();
        for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let r: T = serde_json::from_slice(line).map_err(|e| {
                Error::data(
                    path,
                    Some(i + 1),
                    format!("not a record of this command ({e}); use another --out"),
                )
            })?;
            records.push(r);
        }
        let done = records.iter().map(Keyed::key).collect();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, "write", e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            records,
            done,
        })
    }

    /// Whether `(id, condition)` is finished.
    pub fn is_done(&self, id: &str, condition: &str) -> bool {
        self.done.contains(&(id.to_string(), condition.to_string()))
    }

    /// Appends a record and flushes it to disk.
    pub fn push(&mut self, record: T) -> Result<()> {
        let mut line = serde_json::to_string(&record)
            .map_err(|e| Error::Invalid(format!("cannot encode a record: {e}")))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, "write", e))?;
        self.done.insert(record.key());
        self.records.push(record);
        Ok(())
    }

    /// Every record, earlier runs' first.
    pub fn records(&self) -> &[T] {
        &self.records
    }

    /// The records of items `ids` under `conditions`, condition by condition in the order
    /// given: the run that was asked for, whatever else earlier runs left in the journal.
    pub fn select(&self, ids: &[&str], conditions: &[String]) -> Vec<T>
    where
        T: Clone,
    {
        let at: HashMap<(String, String), &T> = self.records.iter().map(|r| (r.key(), r)).collect();
        conditions
            .iter()
            .flat_map(|c| ids.iter().map(move |id| (id.to_string(), c.clone())))
            .filter_map(|k| at.get(&k).map(|r| (*r).clone()))
            .collect()
    }
}

/// Records grouped by condition, in order of first appearance.
pub fn by_condition<T: Keyed>(records: &[T]) -> Vec<(String, Vec<&T>)> {
    let mut groups: Vec<(String, Vec<&T>)> = Vec::new();
    for r in records {
        let c = r.key().1;
        match groups.iter_mut().find(|(g, _)| *g == c) {
            Some((_, rs)) => rs.push(r),
            None => groups.push((c, vec![r])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Rec(String, String);

    impl Keyed for Rec {
        fn key(&self) -> (String, String) {
            (self.0.clone(), self.1.clone())
        }
    }

    #[test]
    fn a_reopened_journal_selects_the_run_asked_for() {
        let path = std::env::temp_dir().join(format!("cmrm-journal-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rec = |id: &str, c: &str| Rec(id.into(), c.into());
        {
            let mut j = Journal::open(&path).unwrap();
            for r in [
                rec("a", "cmrm"),
                rec("a", "image"),
                rec("b", "image"),
                rec("c", "image"),
            ] {
                j.push(r).unwrap();
            }
        }
        let j: Journal<Rec> = Journal::open(&path).unwrap();
        assert!(j.is_done("b", "image") && !j.is_done("b", "cmrm"));
        // Items beyond the ones asked for (c) are left out; order is condition by condition.
        let got = j.select(&["a", "b"], &["image".into(), "cmrm".into()]);
        assert_eq!(
            got,
            [rec("a", "image"), rec("b", "image"), rec("a", "cmrm")]
        );
        std::fs::remove_file(&path).unwrap();
    }
}
