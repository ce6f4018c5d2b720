//! Continuous batching: one llama.cpp context whose sequences belong to several sessions
//! ("lanes"), decoded together. Each lane is a [`Context`] of its own to the code above: it
//! decodes, rolls back, reads logits and steers as an owned context does, and its graph hook
//! sees only its own rows. A batching thread gathers the lanes' pending decodes and runs them
//! as one `llama_decode` per step on the engine's compute thread:
//!
//! - each generating sequence contributes its one token to every step; prompts fill the rest
//!   of the step (at most one micro-batch, so that a graph callback sees every row of the step
//!   at once), shared evenly between the prompts under way, so a long prompt does not stall
//!   the others and generation goes on while it is read;
//! - a step waits a few milliseconds for every lane in a turn to come with its next decode
//!   (the lanes sample meanwhile), so that steps stay full; waited for long enough
//!   ([`Batched::set_gather`]), the lanes move in lockstep and every step is the same whatever
//!   the threads' timing, so a lane's arithmetic does not depend on it;
//! - the graph callback maps the rows of each tensor to the lanes of the step, and edits only
//!   the rows of lanes that steer, with their own settings; a lane's control vector is added
//!   there to its own rows (llama.cpp's own control vector would reach every sequence);
//! - image embeddings and memory edits run on the compute thread between steps, the whole
//!   tensor belonging to the lane whose image it is.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use llama_cpp_sys_2 as sys;

use super::compute::{ComputeGate, SendPtr};
use super::context::{raw_context, Context};
use super::hook::{GraphHook, HookTensor, SharedHook};
use super::{failure, ContextParams, Model};
use crate::error::{Error, Result};

/// How long a step waits, by default, for the lanes in a turn to send their next decode.
const GATHER: Duration = Duration::from_millis(3);

/// A gather window far longer than a lane that only computes takes between two decodes
/// (sampling, reading an image): lanes held busy for a whole run move in lockstep with it, so
/// the run's results do not depend on its threads' timing (evaluation and calibration).
pub const LOCKSTEP: Duration = Duration::from_secs(30);

/// llama.cpp's limit on the sequences of one context (`LLAMA_MAX_SEQ`, not in its public
/// header).
const MAX_SEQ: usize = 256;

/// Sequences per lane: its conversation and a scratch sequence for steering probes.
const SEQS_PER_LANE: usize = 2;

/// What the batching engine has done, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Lanes (slots) in all.
    pub lanes: usize,
    /// Lanes taken by a session.
    pub lanes_in_use: usize,
    /// Decode steps run.
    pub steps: u64,
    /// Tokens decoded in them.
    pub tokens: u64,
    /// Sum over steps of the sequences each carried (divided by `steps`: the mean batch).
    pub sequences: u64,
    /// Sequences in the latest step.
    pub last_batch: usize,
    /// The most sequences one step carried.
    pub max_batch: usize,
    /// Decodes and jobs (images, cache edits) waiting or under way.
    pub pending: usize,
}

/// A context whose lanes decode together; cheap to clone (all clones are the same context).
#[derive(Clone)]
pub struct Batched<'m> {
    shared: Arc<Shared>,
    model: &'m Model,
}

impl<'m> Batched<'m> {
    /// A context of `lanes` lanes, each of `params.n_ctx` tokens (the KV cache holds all of
    /// them: `lanes * n_ctx` cells); `params.n_seq` and `params.abort` are ignored (each lane
    /// has its own abort flag).
    pub fn new(model: &'m Model, params: &ContextParams, lanes: usize) -> Result<Self> {
        let n_seq = lanes * SEQS_PER_LANE;
        if lanes == 0 || n_seq > MAX_SEQ {
            return Err(Error::Invalid(format!(
                "{lanes} parallel sequences: between 1 and {} are possible",
                MAX_SEQ / SEQS_PER_LANE
            )));
        }
        let dispatch = Arc::new(Mutex::new(Dispatch {
            lanes: (0..lanes).map(|_| LaneHooks::default()).collect(),
            step: StepMap::Idle,
        }));
        let hook: SharedHook = dispatch.clone();
        let mut p = params.clone();
        p.n_seq = n_seq as u32;
        p.n_ctx = params.n_ctx.saturating_mul(lanes as u32);
        p.abort = None;
        let (ptr, hook) = raw_context(model, &p, Some(hook))?;
        // SAFETY: a valid context, not yet shared with anyone.
        let (n_ctx, n_batch, n_ubatch) = unsafe {
            (
                sys::llama_n_ctx(ptr.as_ptr()) as usize,
                sys::llama_n_batch(ptr.as_ptr()) as usize,
                sys::llama_n_ubatch(ptr.as_ptr()) as usize,
            )
        };
        let core = Arc::new(Core {
            queue: Mutex::new(Queue {
                subs: Vec::new(),
                jobs: Vec::new(),
                stop: false,
                busy: vec![0; lanes],
                paused: false,
                gather: GATHER,
            }),
            wake: Condvar::new(),
            dispatch,
            taken: Mutex::new(vec![false; lanes]),
            stats: Stats::default(),
        });
        let mut shared = Shared {
            ptr,
            core: core.clone(),
            gate: params.gate.clone(),
            thread: None,
            _hook: hook,
            lane_ctx: n_ctx / lanes,
            n_batch,
        };
        let step = Stepper {
            core,
            ctx: SendPtr(ptr.as_ptr()),
            gate: params.gate.clone(),
            cap: n_batch.min(n_ubatch).max(1),
            n_vocab: model.n_vocab(),
            n_embd: model.n_embd(),
            embeddings: params.embeddings,
        };
        let thread = std::thread::Builder::new()
            .name("cmrm-batch".into())
            .spawn(move || step.run())
            .map_err(|e| Error::Invalid(format!("cannot start the batching thread: {e}")))?;
        shared.thread = Some(thread);
        Ok(Self {
            shared: Arc::new(shared),
            model,
        })
    }

    /// A lane: a context of its own to its user, decoded with the other lanes. `hook` sees the
    /// lane's rows only; `abort` stops the lane's decodes (not the others'). Fails when every
    /// lane is taken.
    pub fn lane(
        &self,
        hook: Option<SharedHook>,
        abort: Option<Arc<AtomicBool>>,
    ) -> Result<Context<'m>> {
        let core = &self.shared.core;
        let index = {
            let mut taken = lock(&core.taken);
            let i = taken.iter().position(|t| !t).ok_or_else(|| {
                Error::Invalid(format!(
                    "all {} lanes of the context are taken",
                    taken.len()
                ))
            })?;
            taken[i] = true;
            i
        };
        lock(&core.dispatch).lanes[index] = LaneHooks { hook, cvec: None };
        let lane = Lane {
            shared: self.shared.clone(),
            index,
            logits: Vec::new(),
            embd: None,
        };
        Ok(Context::lane(
            self.model,
            lane,
            self.shared.ptr,
            self.shared.n_batch,
            self.shared.gate.clone(),
            abort,
        ))
    }

    /// How long a step waits for every lane in a turn to send its next decode (3 ms by
    /// default). Long enough, and the lanes move in lockstep: every step is then a function
    /// of what the lanes decode, not of their threads' timing.
    pub fn set_gather(&self, window: Duration) {
        lock(&self.shared.core.queue).gather = window;
        self.shared.core.wake.notify_all();
    }

    /// Holds every step while `on` (e.g. to let a burst of turns start together).
    pub fn pause(&self, on: bool) {
        lock(&self.shared.core.queue).paused = on;
        self.shared.core.wake.notify_all();
    }

    /// What the engine has done so far.
    pub fn stats(&self) -> BatchStats {
        let core = &self.shared.core;
        let s = &core.stats;
        let taken = lock(&core.taken);
        BatchStats {
            lanes: taken.len(),
            lanes_in_use: taken.iter().filter(|t| **t).count(),
            steps: s.steps.load(Ordering::Relaxed),
            tokens: s.tokens.load(Ordering::Relaxed),
            sequences: s.sequences.load(Ordering::Relaxed),
            last_batch: s.last_batch.load(Ordering::Relaxed),
            max_batch: s.max_batch.load(Ordering::Relaxed),
            pending: s.pending.load(Ordering::Relaxed),
        }
    }
}

/// A lock that a panic elsewhere does not make unusable (the data are plain tables).
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The context and its batching thread; freed when the last lane and handle are gone.
struct Shared {
    ptr: NonNull<sys::llama_context>,
    core: Arc<Core>,
    gate: Arc<ComputeGate>,
    thread: Option<JoinHandle<()>>,
    /// Keeps the dispatching hook at a fixed address for the C callback.
    _hook: Option<Box<SharedHook>>,
    /// Tokens each lane may hold.
    lane_ctx: usize,
    n_batch: usize,
}

// SAFETY: the context is only used on the compute thread (through the gate), by jobs that the
// lanes and the batching thread submit and wait for; the pointer itself is only copied.
unsafe impl Send for Shared {}
// SAFETY: as above: no method of `Shared` touches the context outside the compute thread.
unsafe impl Sync for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        lock(&self.core.queue).stop = true;
        self.core.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let ctx = SendPtr(self.ptr.as_ptr());
        // SAFETY: created by llama_init_from_model and freed once, on the compute thread (no
        // job of this context can be running: the batching thread has stopped and no lane is
        // left), before the hook box is dropped.
        let freed = self.gate.run(move || {
            let ctx = ctx;
            unsafe { sys::llama_free(ctx.0) }
        });
        if freed.is_err() {
            // SAFETY: as above; the compute thread is gone, so nothing else runs.
            unsafe { sys::llama_free(self.ptr.as_ptr()) }
        }
    }
}

/// What the lanes and the batching thread share.
struct Core {
    queue: Mutex<Queue>,
    wake: Condvar,
    dispatch: Arc<Mutex<Dispatch>>,
    taken: Mutex<Vec<bool>>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    steps: AtomicU64,
    tokens: AtomicU64,
    sequences: AtomicU64,
    last_batch: AtomicUsize,
    max_batch: AtomicUsize,
    pending: AtomicUsize,
}

/// Work a lane runs alone on the context between steps (an image's embeddings, a cache edit).
type Job = Box<dyn FnOnce(*mut sys::llama_context) + Send>;

struct Queue {
    subs: Vec<Sub>,
    /// Jobs by lane, run between steps in lane order.
    jobs: Vec<(usize, Job)>,
    stop: bool,
    /// Per lane, the turns (or longer spans) under way: a step waits for the decodes of the
    /// lanes with any.
    busy: Vec<usize>,
    /// No step starts while set.
    paused: bool,
    /// How long a step waits for the busy lanes.
    gather: Duration,
}

/// A lane's decode: its tokens, decoded over one or more steps.
struct Sub {
    lane: usize,
    seq: i32,
    tokens: Vec<i32>,
    pos0: usize,
    /// Tokens decoded so far.
    done: usize,
    logits: bool,
    abort: Option<Arc<AtomicBool>>,
    reply: mpsc::SyncSender<Result<Reply>>,
}

impl Sub {
    fn left(&self) -> usize {
        self.tokens.len() - self.done
    }

    fn aborted(&self) -> bool {
        self.abort
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Relaxed))
    }
}

/// The outcome of a lane's decode.
struct Reply {
    logits: Option<Vec<f32>>,
    embd: Option<Vec<f32>>,
}

/// A lane's steering as the dispatching hook sees it.
#[derive(Default)]
struct LaneHooks {
    hook: Option<SharedHook>,
    /// A control vector, added to this lane's rows.
    cvec: Option<Cvec>,
}

/// A control vector as llama.cpp takes it: a row per layer from layer 1, applied to layers
/// `first..=last`.
pub(super) struct Cvec {
    pub(super) rows: Vec<f32>,
    pub(super) n_embd: usize,
    pub(super) first: usize,
    pub(super) last: usize,
}

/// Which rows of the tensors of the running decode belong to which lane.
enum StepMap {
    Idle,
    /// Every row belongs to this lane (an image decoded on its own).
    Whole(usize),
    /// A step: rows of the whole batch, and rows of the outputs (the last layer keeps only
    /// those).
    Rows {
        n_tokens: usize,
        n_outputs: usize,
        segs: Vec<Segment>,
    },
}

struct Segment {
    lane: usize,
    rows: Range<usize>,
    outs: Range<usize>,
}

/// The graph hook of the shared context: hands each lane its own rows.
struct Dispatch {
    lanes: Vec<LaneHooks>,
    step: StepMap,
}

impl Dispatch {
    /// Whether lane `l` steers or watches tensor `name`.
    fn lane_wants(&self, l: usize, name: &str) -> bool {
        let lane = &self.lanes[l];
        lane.cvec_row(name).is_some() || lane.hook.as_ref().is_some_and(|h| lock(h).wants(name))
    }
}

/// The layer of an `l_out-<il>` tensor.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("l_out-")?.parse().ok()
}

impl LaneHooks {
    /// The control vector's row for tensor `name`, when it has one (llama.cpp's rule: layers
    /// 1.. within the vector's range).
    fn cvec_row(&self, name: &str) -> Option<&[f32]> {
        let cv = self.cvec.as_ref()?;
        let il = layer_of(name)?;
        if il == 0 || il < cv.first || il > cv.last {
            return None;
        }
        cv.rows.get((il - 1) * cv.n_embd..il * cv.n_embd)
    }
}

impl GraphHook for Dispatch {
    fn wants(&self, name: &str) -> bool {
        // Called for every node of every graph: no allocation.
        match &self.step {
            StepMap::Idle => false,
            StepMap::Whole(l) => self.lane_wants(*l, name),
            StepMap::Rows { segs, .. } => segs.iter().any(|s| self.lane_wants(s.lane, name)),
        }
    }

    fn observe(&mut self, name: &str, t: &mut HookTensor<'_>) {
        let n = t.n_rows();
        let parts: Vec<(usize, Range<usize>)> = match &self.step {
            StepMap::Idle => return,
            StepMap::Whole(l) => vec![(*l, 0..n)],
            StepMap::Rows {
                n_tokens,
                n_outputs,
                segs,
            } => {
                let outputs = n != *n_tokens;
                if outputs && n != *n_outputs {
                    return;
                }
                segs.iter()
                    .map(|s| {
                        (
                            s.lane,
                            if outputs {
                                s.outs.clone()
                            } else {
                                s.rows.clone()
                            },
                        )
                    })
                    .collect()
            }
        };
        for (l, rows) in parts {
            if rows.is_empty() {
                continue;
            }
            let lane = &self.lanes[l];
            let mut view = t.window(rows);
            if let Some(add) = lane.cvec_row(name) {
                for r in 0..view.n_rows() {
                    let mut row = view.read_row(r);
                    row.iter_mut().zip(add).for_each(|(x, a)| *x += a);
                    view.write_row(r, &row);
                }
            }
            if let Some(h) = &lane.hook {
                let mut h = lock(h);
                if h.wants(name) {
                    h.observe(name, &mut view);
                }
            }
        }
    }
}

/// The batching thread.
struct Stepper {
    core: Arc<Core>,
    ctx: SendPtr<sys::llama_context>,
    gate: Arc<ComputeGate>,
    /// Tokens per step.
    cap: usize,
    n_vocab: usize,
    n_embd: usize,
    embeddings: bool,
}

/// One step's share of a decode.
struct Take {
    sub: usize,
    n: usize,
    /// The step decodes the decode's last token and its logits are wanted.
    logits: bool,
}

impl Stepper {
    fn run(self) {
        let mut active: Vec<Sub> = Vec::new();
        let mut jobs: Vec<(usize, Job)> = Vec::new();
        while self.gather(&mut active, &mut jobs) {
            if !jobs.is_empty() {
                // In lane order, so that the cache's layout does not depend on which thread
                // came first; the lanes that ran one are then waited for again.
                jobs.sort_by_key(|(lane, _)| *lane);
                for (lane, job) in jobs.drain(..) {
                    self.exclusive(lane, job);
                }
                continue;
            }
            active.retain(|s| {
                if s.aborted() {
                    let _ = s.reply.try_send(Err(Error::Cancelled));
                    false
                } else {
                    true
                }
            });
            if active.is_empty() {
                continue;
            }
            // In lane order: a step's rows, and so the cells they take, do not depend on
            // which thread came first.
            active.sort_by_key(|s| s.lane);
            let takes = plan(&active, self.cap);
            let outcome = catch_unwind(AssertUnwindSafe(|| self.step(&active, &takes)));
            let result = match outcome {
                Ok(r) => r,
                Err(_) => Err(Error::Internal("a batched decode panicked".into())),
            };
            self.finish(&mut active, &takes, result);
            self.core
                .stats
                .pending
                .store(active.len(), Ordering::Relaxed);
        }
        for s in active {
            let _ = s.reply.try_send(Err(stopped()));
        }
    }

    /// Moves new decodes into `active`, waiting for the first one, then at most the gather
    /// window for every busy lane's; false when the context is going away.
    fn gather(&self, active: &mut Vec<Sub>, jobs: &mut Vec<(usize, Job)>) -> bool {
        let mut q = lock(&self.core.queue);
        let mut deadline = None;
        loop {
            active.append(&mut q.subs);
            jobs.append(&mut q.jobs);
            self.core
                .stats
                .pending
                .store(active.len() + jobs.len(), Ordering::Relaxed);
            if q.stop {
                return false;
            }
            if (active.is_empty() && jobs.is_empty()) || q.paused {
                q = self
                    .core
                    .wake
                    .wait(q)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            let all_here = q
                .busy
                .iter()
                .enumerate()
                .filter(|(_, b)| **b > 0)
                .all(|(l, _)| {
                    active.iter().any(|s| s.lane == l) || jobs.iter().any(|(j, _)| *j == l)
                });
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + q.gather);
            let now = Instant::now();
            if all_here || now >= deadline {
                if std::env::var_os("CMRM_DEBUG_BATCH").is_some() {
                    eprintln!(
                        "gather: all_here {all_here} busy {:?} subs {:?} jobs {:?}",
                        q.busy,
                        active
                            .iter()
                            .map(|s| (s.lane, s.tokens.len()))
                            .collect::<Vec<_>>(),
                        jobs.iter().map(|j| j.0).collect::<Vec<_>>()
                    );
                }
                return true;
            }
            q = self
                .core
                .wake
                .wait_timeout(q, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Runs a lane's job on the compute thread, every row the graph hook sees meanwhile being
    /// the lane's.
    fn exclusive(&self, lane: usize, job: Job) {
        let dispatch = self.core.dispatch.clone();
        let ctx = SendPtr(self.ctx.0);
        // A panic in the job drops its reply channel: its lane gets an error.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            self.gate.run(move || {
                let ctx = ctx;
                let _map = Mapped::new(&dispatch, StepMap::Whole(lane));
                job(ctx.0);
            })
        }));
    }

    /// Runs one step on the compute thread; the logits (and embeddings) of each take that
    /// wants them.
    fn step(&self, active: &[Sub], takes: &[Take]) -> Result<Vec<Reply>> {
        let mut tokens = Vec::new();
        let mut pos = Vec::new();
        let mut seqs = Vec::new();
        let mut wants = Vec::new();
        let mut segs = Vec::new();
        let mut n_outputs = 0;
        for t in takes {
            let s = &active[t.sub];
            let start = tokens.len();
            let out0 = n_outputs;
            for k in 0..t.n {
                let i = s.done + k;
                tokens.push(s.tokens[i]);
                pos.push((s.pos0 + i) as i32);
                seqs.push(s.seq);
                let out = t.logits && k + 1 == t.n;
                wants.push(out);
                n_outputs += usize::from(out);
            }
            segs.push(Segment {
                lane: s.lane,
                rows: start..tokens.len(),
                outs: out0..n_outputs,
            });
        }
        let stats = &self.core.stats;
        stats.steps.fetch_add(1, Ordering::Relaxed);
        stats
            .tokens
            .fetch_add(tokens.len() as u64, Ordering::Relaxed);
        stats
            .sequences
            .fetch_add(takes.len() as u64, Ordering::Relaxed);
        stats.last_batch.store(takes.len(), Ordering::Relaxed);
        stats.max_batch.fetch_max(takes.len(), Ordering::Relaxed);
        let map = StepMap::Rows {
            n_tokens: tokens.len(),
            n_outputs,
            segs,
        };
        let dispatch = self.core.dispatch.clone();
        let ctx = SendPtr(self.ctx.0);
        let (n_vocab, n_embd, embeddings) = (self.n_vocab, self.n_embd, self.embeddings);
        let (rc, rows) = self.gate.run(move || {
            let ctx = ctx;
            let _map = Mapped::new(&dispatch, map);
            let n = tokens.len();
            // SAFETY: allocates a batch with room for n tokens of one sequence each.
            let mut batch = unsafe { sys::llama_batch_init(n as i32, 0, 1) };
            // SAFETY: every array of the batch was allocated for n entries (seq_id rows for
            // one id).
            unsafe {
                for i in 0..n {
                    *batch.token.add(i) = tokens[i];
                    *batch.pos.add(i) = pos[i];
                    *batch.n_seq_id.add(i) = 1;
                    **batch.seq_id.add(i) = seqs[i];
                    *batch.logits.add(i) = i8::from(wants[i]);
                }
            }
            batch.n_tokens = n as i32;
            // SAFETY: the context is valid (its owner joins this thread before freeing it)
            // and the batch fully initialised.
            let rc = unsafe { sys::llama_decode(ctx.0, batch) };
            // SAFETY: the batch came from llama_batch_init and is freed once.
            unsafe { sys::llama_batch_free(batch) };
            let mut rows = Vec::new();
            if rc == 0 {
                for (i, _) in wants.iter().enumerate().filter(|(_, w)| **w) {
                    // SAFETY: row i of the decode just made has an output (its logits flag
                    // was set); the rows hold n_vocab (n_embd) floats and are copied before
                    // anything else runs on the context.
                    unsafe {
                        let l = sys::llama_get_logits_ith(ctx.0, i as i32);
                        let logits =
                            (!l.is_null()).then(|| std::slice::from_raw_parts(l, n_vocab).to_vec());
                        let embd = if embeddings {
                            let e = sys::llama_get_embeddings_ith(ctx.0, i as i32);
                            (!e.is_null()).then(|| std::slice::from_raw_parts(e, n_embd).to_vec())
                        } else {
                            None
                        };
                        rows.push(Reply { logits, embd });
                    }
                }
            }
            (rc, rows)
        })?;
        match rc {
            0 => Ok(rows),
            1 => Err(Error::ContextFull {
                needed: 0,
                n_ctx: 0,
            }),
            _ => Err(failure("batched decode", Some(rc))),
        }
    }

    /// Advances the decodes of a step and answers those that are complete.
    fn finish(&self, active: &mut Vec<Sub>, takes: &[Take], result: Result<Vec<Reply>>) {
        match result {
            Ok(rows) => {
                let mut rows = rows.into_iter();
                for t in takes {
                    let s = &mut active[t.sub];
                    s.done += t.n;
                    if t.logits {
                        let row = rows.next().unwrap_or(Reply {
                            logits: None,
                            embd: None,
                        });
                        let reply = if row.logits.is_some() {
                            Ok(row)
                        } else {
                            Err(failure("reading batched logits", None))
                        };
                        let _ = s.reply.try_send(reply);
                    } else if s.left() == 0 {
                        let _ = s.reply.try_send(Ok(Reply {
                            logits: None,
                            embd: None,
                        }));
                    }
                }
                active.retain(|s| s.left() > 0);
            }
            Err(e) => {
                // Every decode of the failed step fails; the others wait for the next.
                let failed: Vec<usize> = takes.iter().map(|t| t.sub).collect();
                let msg = e.to_string();
                let full = matches!(e, Error::ContextFull { .. });
                for &i in &failed {
                    let err = if full {
                        Error::ContextFull {
                            needed: 0,
                            n_ctx: 0,
                        }
                    } else {
                        Error::Internal(msg.clone())
                    };
                    let _ = active[i].reply.try_send(Err(err));
                }
                let mut i = 0;
                active.retain(|_| {
                    i += 1;
                    !failed.contains(&(i - 1))
                });
            }
        }
    }
}

fn stopped() -> Error {
    Error::Invalid("the batched context is shutting down".into())
}

/// Splits at most `cap` tokens among the pending decodes: one token for each decode that has
/// one left (a generating sequence), then the prompts, evenly, in order of arrival.
fn plan(active: &[Sub], cap: usize) -> Vec<Take> {
    let mut n = vec![0usize; active.len()];
    let mut budget = cap;
    for (i, s) in active.iter().enumerate() {
        if s.left() == 1 && budget > 0 {
            n[i] = 1;
            budget -= 1;
        }
    }
    while budget > 0 {
        let needy: Vec<usize> = (0..active.len())
            .filter(|&i| active[i].left() > n[i])
            .collect();
        if needy.is_empty() {
            break;
        }
        let share = (budget / needy.len()).max(1);
        for i in needy {
            let give = share.min(active[i].left() - n[i]).min(budget);
            n[i] += give;
            budget -= give;
            if budget == 0 {
                break;
            }
        }
    }
    n.iter()
        .enumerate()
        .filter(|(_, &k)| k > 0)
        .map(|(i, &k)| Take {
            sub: i,
            n: k,
            logits: active[i].logits && active[i].done + k == active[i].tokens.len(),
        })
        .collect()
}

/// Sets the dispatching hook's row map for the decode under way and clears it afterwards,
/// also when the decode panics.
struct Mapped<'a>(&'a Mutex<Dispatch>);

impl<'a> Mapped<'a> {
    fn new(d: &'a Mutex<Dispatch>, map: StepMap) -> Self {
        lock(d).step = map;
        Self(d)
    }
}

impl Drop for Mapped<'_> {
    fn drop(&mut self) {
        lock(self.0).step = StepMap::Idle;
    }
}

/// A session's share of a batched context (see [`Batched::lane`]).
pub(super) struct Lane {
    shared: Arc<Shared>,
    index: usize,
    logits: Vec<f32>,
    embd: Option<Vec<f32>>,
}

impl Lane {
    /// The context's sequence id for the lane's sequence `seq` (0 or 1).
    fn seq(&self, seq: i32) -> Result<i32> {
        if !(0..SEQS_PER_LANE as i32).contains(&seq) {
            return Err(Error::Invalid(format!("a lane has no sequence {seq}")));
        }
        Ok((self.index * SEQS_PER_LANE) as i32 + seq)
    }

    /// Tokens the lane may hold.
    pub(super) fn n_ctx(&self) -> usize {
        self.shared.lane_ctx
    }

    /// Decodes `tokens` of the lane's sequence `seq` in the steps of the batching thread;
    /// true when logits were kept (`logits_last`).
    pub(super) fn decode(
        &mut self,
        tokens: &[i32],
        pos0: usize,
        seq: i32,
        logits_last: bool,
        abort: Option<Arc<AtomicBool>>,
    ) -> Result<()> {
        let seq = self.seq(seq)?;
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut q = lock(&self.shared.core.queue);
            if q.stop {
                return Err(stopped());
            }
            q.subs.push(Sub {
                lane: self.index,
                seq,
                tokens: tokens.to_vec(),
                pos0,
                done: 0,
                logits: logits_last,
                abort,
                reply: tx,
            });
        }
        self.shared.core.wake.notify_all();
        let reply = rx.recv().map_err(|_| stopped())??;
        if logits_last {
            self.logits = reply.logits.unwrap_or_default();
            self.embd = reply.embd;
        }
        Ok(())
    }

    /// The logits the latest decode kept.
    pub(super) fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// The embeddings the latest decode kept.
    pub(super) fn embeddings(&self) -> Option<&[f32]> {
        self.embd.as_deref()
    }

    /// Runs `f` on the compute thread between steps, with the context and the context's id
    /// of the lane's sequence `seq`; every row the graph hook sees meanwhile is the lane's.
    pub(super) fn exclusive<R: Send + 'static>(
        &self,
        seq: i32,
        f: impl FnOnce(*mut sys::llama_context, i32) -> R + Send + 'static,
    ) -> Result<R> {
        let seq = self.seq(seq)?;
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |ctx| {
            let _ = tx.send(f(ctx, seq));
        });
        {
            let mut q = lock(&self.shared.core.queue);
            if q.stop {
                return Err(stopped());
            }
            q.jobs.push((self.index, job));
        }
        self.shared.core.wake.notify_all();
        rx.recv()
            .map_err(|_| Error::Internal("a job of a batched context failed".into()))
    }

    /// Forgets positions `pos..` of the lane's sequence `seq`.
    pub(super) fn truncate(&self, seq: i32, pos: usize) -> Result<bool> {
        self.exclusive(seq, move |ctx, seq| {
            // SAFETY: a valid context, used on the compute thread only; removes a position
            // range of one sequence from its memory.
            unsafe { sys::llama_memory_seq_rm(sys::llama_get_memory(ctx), seq, pos as i32, -1) }
        })
    }

    /// Sets (or with `None` removes) the lane's control vector.
    pub(super) fn set_cvec(&self, cvec: Option<Cvec>) {
        lock(&self.shared.core.dispatch).lanes[self.index].cvec = cvec;
    }
}

/// A lane's turn (or a longer span of work, e.g. a run of turns that must stay in lockstep with
/// the other lanes): while one is held, steps wait (within the gather window) for the lane's
/// decodes. Nothing for a context of its own.
pub struct Busy(Option<(Arc<Shared>, usize)>);

impl Busy {
    pub(super) fn none() -> Self {
        Self(None)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some((shared, index)) = self.0.take() {
            let mut q = lock(&shared.core.queue);
            q.busy[index] = q.busy[index].saturating_sub(1);
            drop(q);
            shared.core.wake.notify_all();
        }
    }
}

impl Lane {
    /// Marks the lane in a turn until the guard is dropped.
    pub(super) fn busy(&self) -> Busy {
        lock(&self.shared.core.queue).busy[self.index] += 1;
        Busy(Some((self.shared.clone(), self.index)))
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        for seq in 0..SEQS_PER_LANE as i32 {
            let _ = self.truncate(seq, 0);
        }
        let core = &self.shared.core;
        lock(&core.dispatch).lanes[self.index] = LaneHooks::default();
        lock(&core.taken)[self.index] = false;
    }
}
