//! One thread computes every graph of an engine. Sessions on other threads hand it their
//! decodes and wait: they compute one at a time, first come first served, each with all the
//! engine's threads, and llama.cpp's OpenMP worker team always belongs to the same master
//! thread, so it stays warm instead of sleeping and waking at every switch between sessions
//! (which, measured, cut the throughput of two slots to a quarter).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Mutex;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// The compute thread of an engine.
#[derive(Debug)]
pub struct ComputeGate {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Default for ComputeGate {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cmrm-compute".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("start the compute thread");
        Self {
            jobs: Mutex::new(tx),
        }
    }
}

impl ComputeGate {
    /// Runs `f` on the compute thread and waits for its result (a panic in `f` comes back
    /// as a panic here).
    pub(super) fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R> {
        let (done, result) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let r = catch_unwind(AssertUnwindSafe(f));
            let _ = done.send(r);
        });
        let gone = || Error::Invalid("the compute thread has stopped".into());
        self.jobs
            .lock()
            .map_err(|_| gone())?
            .send(job)
            .map_err(|_| gone())?;
        match result.recv() {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => resume_unwind(panic),
            Err(_) => Err(gone()),
        }
    }
}

/// A raw pointer handed to the compute thread while its owner waits for the result.
pub(super) struct SendPtr<T>(pub *mut T);

// SAFETY: the pointer is used only by the compute thread, only while the thread that owns the
// pointee waits in `ComputeGate::run` (it holds the `&mut` borrow that keeps everyone else
// away), so the pointee is never used from two threads at once.
unsafe impl<T> Send for SendPtr<T> {}
