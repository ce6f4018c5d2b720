//! Checks of the files a command names, made before any model loads: images a data set refers
//! to exist, and output folders can be written.

use std::path::Path;

use anyhow::{Context as _, Result};

use cmrm::data::Item;

/// Every image path of `items` (relative to the data file `data`) names an existing file.
pub fn check_images(data: &Path, items: &[Item]) -> Result<()> {
    for item in items {
        if let Some(img) = item.image.as_deref().filter(|i| !i.starts_with("data:")) {
            if !Path::new(img).is_file() {
                anyhow::bail!(
                    "{}: item {}: its image {img} does not exist (cannot read it; image paths are relative to the data file)",
                    data.display(),
                    item.id
                );
            }
        }
    }
    Ok(())
}

/// `dir` exists (it is created if needed) and a file can be written in it.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
    let probe = dir.join(".cmrm-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("{}: cannot write into the output folder", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// The folder of the output file `path` exists and can be written.
pub fn check_output_file(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    anyhow::ensure!(
        dir.is_dir(),
        "{}: cannot write: the folder {} does not exist",
        path.display(),
        dir.display()
    );
    let probe = dir.join(".cmrm-write-test");
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "{}: cannot write into the folder {}",
            path.display(),
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Writes `<out>/<name>-summary.json` and `.md` and prints the summary (`json`: the JSON).
pub fn publish<S: serde::Serialize>(
    out: &Path,
    name: &str,
    summaries: &S,
    markdown: &str,
    json: bool,
) -> Result<()> {
    let body = cmrm::eval::publish(out, name, summaries, markdown)?;
    if json {
        println!("{body}");
    } else {
        print!("{markdown}");
    }
    Ok(())
}
