//! Atomic file writes, one policy for every output cmrm writes: the bytes go to a hidden
//! temporary file in the same folder, which is flushed to disk and renamed over the target,
//! then the folder itself is flushed. A failure (disk full, read-only folder, a kill) leaves any
//! earlier file at the target intact; a temporary file left by a kill is replaced by the next
//! write.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `contents` to `path` atomically.
pub fn write(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(contents)
        .map_err(|e| Error::io(path, "write", e))?;
    f.commit()
}

/// A file being written that appears at its path only when [`AtomicFile::commit`] succeeds.
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Starts writing `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".cmrm-tmp");
        let tmp = path.with_file_name(tmp_name);
        let file = File::create(&tmp).map_err(|e| Error::io(path, "create", e))?;
        Ok(Self {
            target: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::new(file)),
        })
    }

    /// Flushes the data to disk and moves the file into place.
    pub fn commit(mut self) -> Result<()> {
        let out = self.out.take().expect("not committed twice");
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.target, "write", e.into_error()))?;
        file.sync_all()
            .map_err(|e| Error::io(&self.target, "write", e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target)
            .map_err(|e| Error::io(&self.target, "write", e))?;
        // Make the rename itself durable; a folder that cannot be opened is not an error.
        let dir = match self.target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.as_mut().expect("open").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().expect("open").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("cmrm-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.txt");
        write(&path, b"first").unwrap();
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(b"half").unwrap();
            // Dropped without commit: an error in the middle of writing.
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.txt")]);
        let e = write(&dir.join("missing/out.txt"), b"x").unwrap_err();
        assert!(e.to_string().contains("missing/out.txt"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
