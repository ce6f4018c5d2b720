//! Slots: `--parallel N` sessions on one engine, each on its own thread, taking one request at
//! a time. A request waits in a bounded queue for a free slot, preferring the slot whose cache
//! holds the longest prefix of its conversation; the engine's compute gate lets one slot
//! decode at a time, so N slots share the cores in turn instead of oversubscribing them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::api::{ApiError, CachedTokens, Usage};
use super::metrics::Metrics;
use super::request::Prepared;
use crate::engine::Engine;
use crate::session::{Applied, Message, Session, SessionOptions, StopReason};
use crate::steer::CmrmSteering;

/// What a slot sends back while it answers.
pub enum Event {
    /// A piece of the answer.
    Piece(String),
    /// The answer is complete (or failed), with the slot's lease: the receiver releases the
    /// slot after it has stopped watching for its client going away.
    Done(Box<Result<Outcome, ApiError>>, Lease),
}

/// A finished answer.
pub struct Outcome {
    /// The whole text.
    pub text: String,
    /// Why it stopped.
    pub stop: StopReason,
    /// Token counts.
    pub usage: Usage,
    /// What CMRM applied.
    pub applied: Applied,
    /// Prompt time, ms.
    pub prompt_ms: f64,
    /// Generation time, ms.
    pub gen_ms: f64,
}

/// A request handed to a slot.
struct Job {
    prepared: Prepared,
    /// Where the answer goes (dropped by the client's side when it goes away).
    events: mpsc::Sender<Event>,
    lease: Lease,
}

/// The right to use one slot; the slot is free again when it is dropped.
pub struct Lease {
    slot: usize,
    pool: Arc<PoolState>,
    cancel: Arc<AtomicBool>,
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Set it to stop the slot's answer at once (the session's abort flag: it stops a decode
    /// under way too).
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut s) = self.pool.slots.lock() {
            s[self.slot].busy = false;
        }
        self.pool.metrics.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

struct SlotState {
    busy: bool,
    cancel: Arc<AtomicBool>,
    /// Keys of the conversation the slot's cache holds.
    keys: Vec<u64>,
    last_used: Instant,
}

struct PoolState {
    slots: Mutex<Vec<SlotState>>,
    metrics: Arc<Metrics>,
}

/// The slots.
pub struct Pool {
    senders: Vec<std::sync::mpsc::Sender<Job>>,
    free: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
    state: Arc<PoolState>,
}

impl Pool {
    /// One session per steering, each on a thread of its own.
    pub fn start(
        engine: &'static Engine,
        steerings: Vec<CmrmSteering>,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> crate::Result<Self> {
        let n = steerings.len();
        let flags: Vec<Arc<AtomicBool>> =
            (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let sessions = steerings
            .into_iter()
            .zip(&flags)
            .map(|(s, f)| {
                Session::new(
                    engine,
                    SessionOptions::new().steering(s).abort_flag(f.clone()),
                )
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let state = Arc::new(PoolState {
            slots: Mutex::new(
                flags
                    .into_iter()
                    .map(|cancel| SlotState {
                        busy: false,
                        cancel,
                        keys: Vec::new(),
                        last_used: Instant::now(),
                    })
                    .collect(),
            ),
            metrics: metrics.clone(),
        });
        let mut senders = Vec::with_capacity(n);
        for (i, session) in sessions.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            senders.push(tx);
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("slot-{i}"))
                .spawn(move || work(session, rx, metrics))
                .expect("start a slot thread");
        }
        Ok(Self {
            senders,
            free: Arc::new(Semaphore::new(n)),
            waiting: AtomicUsize::new(0),
            queue,
            state,
        })
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) for a free slot, or refuses at once when the queue is full.
    pub async fn acquire(&self, keys: &[u64], timeout: Duration) -> Result<Lease, ApiError> {
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        if self.free.available_permits() == 0 && queued >= self.queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(busy(
                "all slots are busy and the queue is full; try again shortly",
            ));
        }
        let permit = tokio::time::timeout(timeout, self.free.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(busy("the server is shutting down")),
            Err(_) => return Err(busy("no slot became free in time (--timeout)")),
        };
        let mut slots = self
            .state
            .slots
            .lock()
            .map_err(|_| ApiError::new(500, "server_error", "slot table poisoned"))?;
        let best = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .max_by_key(|(_, s)| {
                let common = s.keys.iter().zip(keys).take_while(|(a, b)| a == b).count();
                (common, std::cmp::Reverse(s.last_used))
            })
            .map(|(i, _)| i)
            .ok_or_else(|| ApiError::new(500, "server_error", "a permit without a free slot"))?;
        slots[best].busy = true;
        slots[best].keys = keys.to_vec();
        slots[best].last_used = Instant::now();
        slots[best].cancel.store(false, Ordering::Relaxed);
        self.state.metrics.busy.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            slot: best,
            pool: self.state.clone(),
            cancel: slots[best].cancel.clone(),
            _permit: permit,
        })
    }

    /// Hands a request to the slot of `lease`.
    pub fn submit(
        &self,
        lease: Lease,
        prepared: Prepared,
        events: mpsc::Sender<Event>,
    ) -> Result<(), ApiError> {
        let slot = lease.slot;
        self.senders[slot]
            .send(Job {
                prepared,
                events,
                lease,
            })
            .map_err(|_| ApiError::new(500, "server_error", format!("slot {slot} has stopped")))
    }

    /// Refuses new requests (pending ones are answered 503).
    pub fn close(&self) {
        self.free.close();
    }
}

fn busy(message: &str) -> ApiError {
    ApiError::new(503, "unavailable_error", message)
}

/// Keys identifying a conversation message by message (role, text and images), for choosing
/// the slot whose cache holds the longest prefix.
pub fn conversation_keys(history: &[Message], last: &str) -> Vec<u64> {
    let fnv = |h: u64, bytes: &[u8]| crate::hash::fnv1a_from(h, bytes.iter().copied());
    let mut keys: Vec<u64> = history
        .iter()
        .map(|m| {
            let h = fnv(crate::hash::FNV_OFFSET, m.role.as_str().as_bytes());
            let h = fnv(h, m.text.as_bytes());
            m.images
                .iter()
                .fold(h, |h, i| fnv(h, &i.hash().to_le_bytes()))
        })
        .collect();
    keys.push(fnv(crate::hash::FNV_OFFSET, last.as_bytes()));
    keys
}

fn work(mut session: Session<'static>, rx: std::sync::mpsc::Receiver<Job>, metrics: Arc<Metrics>) {
    for job in rx {
        let Job {
            prepared,
            events,
            lease,
        } = job;
        let cancel = lease.cancel_flag();
        if cancel.load(Ordering::Relaxed) || events.is_closed() {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        session.set_history(prepared.history);
        let result = session.send(&prepared.turn, &prepared.options, &mut |piece| {
            !cancel.load(Ordering::Relaxed)
                && events
                    .blocking_send(Event::Piece(piece.to_string()))
                    .is_ok()
        });
        let outcome = match result {
            Ok(g) => {
                metrics.record(&g);
                if g.stop == StopReason::Cancelled {
                    metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Outcome {
                    usage: Usage {
                        prompt_tokens: g.prompt_tokens,
                        completion_tokens: g.tokens.len(),
                        total_tokens: g.prompt_tokens + g.tokens.len(),
                        prompt_tokens_details: CachedTokens {
                            cached_tokens: g.cached_tokens,
                        },
                    },
                    text: g.text,
                    stop: g.stop,
                    applied: g.steering,
                    prompt_ms: g.prompt_ms,
                    gen_ms: g.gen_ms,
                })
            }
            Err(crate::Error::Cancelled) => {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::from(crate::Error::Cancelled))
            }
            // A failed turn leaves the session as it was; the cache is kept.
            Err(e) => Err(ApiError::from(e)),
        };
        // The receiver frees the slot; if it is gone, the failed send drops the lease.
        let _ = events.blocking_send(Event::Done(Box::new(outcome), lease));
    }
}
