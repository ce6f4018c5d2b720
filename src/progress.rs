//! A one-line progress bar with rate and ETA on stderr (redrawn in place on a terminal,
//! a line every 10% otherwise).

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// Progress of a counted job.
pub struct Progress {
    what: String,
    total: usize,
    done: usize,
    start: Instant,
    started_at: usize,
    tty: bool,
    last_decile: usize,
}

impl Progress {
    /// A bar for `total` items of `what`, `done` of which are finished already (resume).
    pub fn new(what: &str, total: usize, done: usize) -> Self {
        Self {
            what: what.to_string(),
            total,
            done,
            start: Instant::now(),
            started_at: done,
            tty: std::io::stderr().is_terminal(),
            last_decile: usize::MAX,
        }
    }

    /// Marks one more item finished and redraws.
    pub fn inc(&mut self) {
        self.done += 1;
        self.draw();
    }

    fn draw(&mut self) {
        let new = (self.done - self.started_at).max(1) as f64;
        let per = self.start.elapsed().as_secs_f64() / new;
        let eta = per * (self.total.saturating_sub(self.done)) as f64;
        let width = 30;
        let filled = (self.done * width).checked_div(self.total).unwrap_or(width);
        let line = format!(
            "[{}{}] {}/{} {} | {:.2} s each | ETA {}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.done,
            self.total,
            self.what,
            per,
            clock(eta)
        );
        let decile = (self.done * 10).checked_div(self.total).unwrap_or(10);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r{line}\x1b[K");
            if self.done >= self.total {
                let _ = writeln!(err);
            }
        } else if decile != self.last_decile || self.done >= self.total {
            let _ = writeln!(err, "{line}");
        }
        self.last_decile = decile;
        let _ = err.flush();
    }
}

fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}
