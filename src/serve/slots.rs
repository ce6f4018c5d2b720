//! Slots: `--parallel N` sessions on one engine, each on its own thread, taking one request at
//! a time. A request waits in a bounded queue for a free slot, preferring the slot whose cache
//! holds the longest prefix of its conversation. With more than one slot, the sessions are
//! lanes of one batched context ([`crate::ffi::Batched`]): every step decodes the next token of
//! each answering slot, and the prompts being read, in one llama.cpp decode, each slot steered
//! by its own request's CMRM settings.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::api::{ApiError, CachedTokens, Usage};
use super::metrics::Metrics;
use super::request::Prepared;
use crate::engine::Engine;
use crate::ffi::{BatchStats, Batched};
use crate::session::{Applied, Message, Session, SessionOptions, StopReason, TokenLogprob};
use crate::steer::CmrmSteering;

/// What a slot sends back while it answers.
pub enum Event {
    /// A piece of the answer, with the log-probabilities of its tokens when they were asked
    /// for.
    Piece(String, Vec<TokenLogprob>),
    /// The answer is complete (or failed), with the slot's lease: the receiver releases the
    /// slot after it has stopped watching for its client going away.
    Done(Box<Result<Outcome, ApiError>>, Lease),
}

/// A finished answer.
pub struct Outcome {
    /// The whole text.
    pub text: String,
    /// Each token's log-probability, when the request asked for them.
    pub logprobs: Option<Vec<TokenLogprob>>,
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

/// A request's place in the server: taken before any work on the request (reading its
/// images), held while it waits for a slot and while a slot answers it. Dropping it gives the
/// place back, also when the request's future is dropped because its client went away.
pub struct Place {
    pool: Arc<PoolState>,
    /// Still waiting for a slot (counted in the queue depth).
    waiting: bool,
}

impl Place {
    /// No longer waiting: a slot took the request.
    fn seated(&mut self) {
        if std::mem::replace(&mut self.waiting, false) {
            self.pool.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.seated();
        self.pool.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The right to use one slot; the slot is free again when it is dropped.
pub struct Lease {
    slot: usize,
    pool: Arc<PoolState>,
    /// Which of the slot's requests this is.
    request: u64,
    _permit: OwnedSemaphorePermit,
    _place: Place,
}

impl Lease {
    /// What stops this request's answer at once, and only this request's.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            slot: self.slot,
            pool: self.pool.clone(),
            request: self.request,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.table()[self.slot].busy = false;
        self.pool.metrics.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Stops one request's answer (the slot's abort flag: it stops a decode under way too), unless
/// its slot has moved on to another request.
pub struct Canceller {
    slot: usize,
    pool: Arc<PoolState>,
    request: u64,
}

impl Canceller {
    /// Stops the answer.
    pub fn cancel(&self) {
        let slots = self.pool.table();
        let s = &slots[self.slot];
        if s.request == self.request {
            s.cancel.store(true, Ordering::Relaxed);
        }
    }
}

struct SlotState {
    busy: bool,
    /// Whether its thread runs (it stops only on a panic outside a request).
    alive: Arc<AtomicBool>,
    /// Requests taken so far; the number of the current one.
    request: u64,
    cancel: Arc<AtomicBool>,
    /// Keys of the conversation the slot's cache holds.
    keys: Vec<u64>,
    last_used: Instant,
}

struct PoolState {
    /// The slot table (a panic never happens while it is locked; a poisoned lock is used
    /// as it is).
    slots: Mutex<Vec<SlotState>>,
    metrics: Arc<Metrics>,
    /// Requests holding a [`Place`]: waiting or answered.
    admitted: AtomicUsize,
    /// Of those, the ones waiting for a slot.
    waiting: AtomicUsize,
}

impl PoolState {
    fn table(&self) -> std::sync::MutexGuard<'_, Vec<SlotState>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The slots.
pub struct Pool {
    senders: Vec<std::sync::mpsc::Sender<Job>>,
    free: Arc<Semaphore>,
    /// Places in all: the slots and the queue.
    places: usize,
    state: Arc<PoolState>,
    /// The context the slots share as lanes (with more than one slot).
    batched: Option<Batched<'static>>,
}

impl Pool {
    /// One session per steering, each on a thread of its own; a slot stops an answer whose
    /// client has taken no piece of it for `stall`.
    pub fn start(
        engine: &'static Engine,
        steerings: Vec<CmrmSteering>,
        queue: usize,
        stall: Duration,
        metrics: Arc<Metrics>,
    ) -> crate::Result<Self> {
        let n = steerings.len();
        let flags: Vec<Arc<AtomicBool>> =
            (0..n).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let batched = if n > 1 {
            Some(engine.batched(n, false)?)
        } else {
            None
        };
        let sessions = steerings
            .into_iter()
            .zip(&flags)
            .map(|(s, f)| {
                let mut options = SessionOptions::new().steering(s).abort_flag(f.clone());
                if let Some(b) = &batched {
                    options = options.batched(b.clone());
                }
                Session::new(engine, options)
            })
            .collect::<crate::Result<Vec<_>>>()?;
        let state = Arc::new(PoolState {
            slots: Mutex::new(
                flags
                    .into_iter()
                    .map(|cancel| SlotState {
                        busy: false,
                        alive: Arc::new(AtomicBool::new(true)),
                        request: 0,
                        cancel,
                        keys: Vec::new(),
                        last_used: Instant::now(),
                    })
                    .collect(),
            ),
            metrics: metrics.clone(),
            admitted: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
        });
        let mut senders = Vec::with_capacity(n);
        let panic_at = std::env::var(TEST_PANIC).ok().filter(|t| !t.is_empty());
        for (i, session) in sessions.into_iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            senders.push(tx);
            let worker = Worker {
                metrics: metrics.clone(),
                stall,
                panic_at: panic_at.clone(),
                _alive: Alive(state.table()[i].alive.clone()),
            };
            std::thread::Builder::new()
                .name(format!("slot-{i}"))
                .spawn(move || worker.work(session, rx))
                .map_err(|e| crate::Error::Invalid(format!("cannot start slot thread {i}: {e}")))?;
        }
        Ok(Self {
            senders,
            free: Arc::new(Semaphore::new(n)),
            places: n + queue,
            state,
            batched,
        })
    }

    /// What the batched decoding has done (none with a single slot).
    pub fn batch_stats(&self) -> Option<BatchStats> {
        self.batched.as_ref().map(Batched::stats)
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.state.waiting.load(Ordering::SeqCst)
    }

    /// A place for a request, or 503 at once when every slot is busy and the queue is full.
    /// Nothing else is done for a request before it holds a place.
    pub fn admit(&self) -> Result<Place, ApiError> {
        let admitted = &self.state.admitted;
        let mut n = admitted.load(Ordering::SeqCst);
        loop {
            if n >= self.places {
                return Err(busy(
                    "all slots are busy and the queue is full; try again shortly",
                ));
            }
            match admitted.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        self.state.waiting.fetch_add(1, Ordering::SeqCst);
        Ok(Place {
            pool: self.state.clone(),
            waiting: true,
        })
    }

    /// Waits (at most `timeout`) for a free slot for the request holding `place`; the place is
    /// given back on every way out, a dropped future included.
    pub async fn acquire(
        &self,
        mut place: Place,
        keys: &[u64],
        timeout: Duration,
    ) -> Result<Lease, ApiError> {
        let permit = tokio::time::timeout(timeout, self.free.clone().acquire_owned()).await;
        let permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(busy("the server is shutting down")),
            Err(_) => return Err(busy("no slot became free in time (--timeout)")),
        };
        place.seated();
        let mut slots = self.state.table();
        let best = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy && s.alive.load(Ordering::SeqCst))
            .max_by_key(|(_, s)| {
                let common = s.keys.iter().zip(keys).take_while(|(a, b)| a == b).count();
                (common, std::cmp::Reverse(s.last_used))
            })
            .map(|(i, _)| i)
            .ok_or_else(|| {
                ApiError::new(
                    500,
                    "server_error",
                    "no slot is left running (see /health); restart the server",
                )
            })?;
        slots[best].busy = true;
        slots[best].request += 1;
        slots[best].keys = keys.to_vec();
        slots[best].last_used = Instant::now();
        slots[best].cancel.store(false, Ordering::Relaxed);
        self.state.metrics.busy.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            slot: best,
            pool: self.state.clone(),
            request: slots[best].request,
            _permit: permit,
            _place: place,
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

    /// What each slot is doing.
    pub fn slots(&self) -> Vec<SlotInfo> {
        self.state
            .table()
            .iter()
            .enumerate()
            .map(|(id, s)| SlotInfo {
                id,
                busy: s.busy,
                alive: s.alive.load(Ordering::SeqCst),
                requests: s.request,
                cached_messages: s.keys.len(),
            })
            .collect()
    }

    /// Slots whose thread has stopped, of all.
    pub fn stopped(&self) -> (usize, usize) {
        let slots = self.state.table();
        let dead = slots
            .iter()
            .filter(|s| !s.alive.load(Ordering::SeqCst))
            .count();
        (dead, slots.len())
    }

    /// Refuses new requests (pending ones are answered 503).
    pub fn close(&self) {
        self.free.close();
    }
}

/// A slot's state, for `GET /slots`.
pub struct SlotInfo {
    /// Its number.
    pub id: usize,
    /// Answering a request.
    pub busy: bool,
    /// Its thread runs.
    pub alive: bool,
    /// Requests it has taken.
    pub requests: u64,
    /// Messages of the conversation its cache holds.
    pub cached_messages: usize,
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

/// Test-only: a request whose last user message is exactly this variable's text makes its
/// slot panic mid-answer, for the tests that check a slot survives a panic. Unset (as it is
/// outside the tests), it changes nothing.
pub const TEST_PANIC: &str = "CMRM_TEST_PANIC";

/// Marks its slot stopped when the slot's thread ends (only a panic outside a request ends it
/// before the server stops).
struct Alive(Arc<AtomicBool>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A slot's thread.
struct Worker {
    metrics: Arc<Metrics>,
    stall: Duration,
    panic_at: Option<String>,
    _alive: Alive,
}

/// Sends `ev`, waiting at most `stall` for the receiver to make room; gives `ev` back when the
/// receiver is gone or has taken nothing for that long.
fn send_within(events: &mpsc::Sender<Event>, ev: Event, stall: Duration) -> Result<(), Event> {
    let deadline = Instant::now() + stall;
    let mut pause = Duration::from_millis(1);
    let mut ev = ev;
    loop {
        match events.try_send(ev) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(e)) => return Err(e),
            Err(TrySendError::Full(e)) => {
                if Instant::now() >= deadline {
                    return Err(e);
                }
                ev = e;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

impl Worker {
    fn work(self, mut session: Session<'static>, rx: std::sync::mpsc::Receiver<Job>) {
        for job in rx {
            let Job {
                prepared,
                events,
                lease,
            } = job;
            let cancel = lease.pool.table()[lease.slot].cancel.clone();
            if cancel.load(Ordering::Relaxed) || events.is_closed() {
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let logprobs = prepared.options.logprobs.is_some();
            // A non-streamed answer gets its log-probabilities from the outcome, not pieces.
            let piece_probs = logprobs && prepared.stream;
            let panic_here = self.panic_at.as_deref() == Some(prepared.turn.text.as_str());
            let mut stalled = false;
            let result = catch_unwind(AssertUnwindSafe(|| {
                session.set_history(prepared.history);
                session.set_tools(prepared.tools);
                session.send_with_logprobs(
                    &prepared.turn,
                    &prepared.options,
                    &mut |piece, probs| {
                        if panic_here {
                            panic!("{TEST_PANIC}: the test's panic in a slot");
                        }
                        if cancel.load(Ordering::Relaxed) {
                            return false;
                        }
                        match send_within(
                            &events,
                            Event::Piece(
                                piece.to_string(),
                                if piece_probs {
                                    probs.to_vec()
                                } else {
                                    Vec::new()
                                },
                            ),
                            self.stall,
                        ) {
                            Ok(()) => true,
                            Err(_) => {
                                stalled = !events.is_closed();
                                false
                            }
                        }
                    },
                )
            }));
            let outcome = match result {
                Ok(Ok(g)) => {
                    self.metrics.record(&g);
                    if g.stop == StopReason::Cancelled {
                        self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                    if stalled {
                        self.metrics.stalled.fetch_add(1, Ordering::Relaxed);
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
                        logprobs: logprobs.then_some(g.logprobs),
                        stop: g.stop,
                        applied: g.steering,
                        prompt_ms: g.prompt_ms,
                        gen_ms: g.gen_ms,
                    })
                }
                Ok(Err(crate::Error::Cancelled)) => {
                    self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                    Err(ApiError::from(crate::Error::Cancelled))
                }
                // A failed turn leaves the session as it was; the cache is kept.
                Ok(Err(e)) => Err(ApiError::from(e)),
                Err(panic) => {
                    // The session may be half-way through a turn: start it afresh.
                    session.reset();
                    self.metrics.panics.fetch_add(1, Ordering::Relaxed);
                    let what = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic");
                    eprintln!("cmrm serve: a slot panicked ({what}); its session was reset");
                    Err(ApiError::new(
                        500,
                        "server_error",
                        "the server failed on this request (an internal error, logged); the slot was reset: retry, and report it if it repeats",
                    ))
                }
            };
            // The receiver frees the slot; if it is gone or stalled, the event (and the lease
            // in it) is dropped here, which frees the slot.
            let wait = if stalled { Duration::ZERO } else { self.stall };
            let _ = send_within(&events, Event::Done(Box::new(outcome), lease), wait);
        }
    }
}
