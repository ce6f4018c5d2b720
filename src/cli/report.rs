//! `cmrm report`: one HTML page from an output folder.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Flags of `cmrm report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The folder given as --out to eval, analyze and sweep.
    #[arg(long, default_value = "cmrm-out")]
    out: PathBuf,
    /// The HTML file (default: <out>/report.html).
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

/// Writes the report.
pub fn run(args: ReportArgs) -> Result<()> {
    let html = cmrm::report::build(&args.out)?;
    let path = args.output.unwrap_or_else(|| args.out.join("report.html"));
    super::files::check_output_file(&path)?;
    cmrm::atomic::write(&path, html.as_bytes())?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
