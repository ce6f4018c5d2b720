//! Running a plan's conditions on items: each item under each condition not yet in the
//! journal, answers judged for safety or scored for utility and fidelity.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use serde::{de::DeserializeOwned, Serialize};

use super::fidelity::{compare, FidelityRecord};
use super::journal::{Journal, Keyed};
use super::judge::{is_refusal, refusal_verdict, LlmJudge};
use super::plan::{ConditionPlan, Named};
use super::runner::{Condition, Runner};
use super::safety::SafetyRecord;
use super::utility::UtilityRecord;
use crate::data::Item;
use crate::engine::Engine;
use crate::error::Result;
use crate::ffi::{Busy, LOCKSTEP};
use crate::progress::Progress;
use crate::settings::SteerConfig;
use crate::vectors::Fit;

/// The conditions of a plan on one runner, or on `parallel` runners whose sessions are lanes of
/// one batched context (items are then answered `parallel` at a time).
pub struct Conditions<'e> {
    runners: Vec<Runner<'e>>,
    list: Vec<Named>,
    fit: Option<(PathBuf, Fit)>,
}

impl<'e> Conditions<'e> {
    /// The conditions of `plan` on `engine`; `system` is every item's system message,
    /// `n_predict` the answer length and `parallel` the items answered at once.
    pub fn new(
        engine: &'e Engine,
        plan: ConditionPlan,
        system: Option<String>,
        n_predict: usize,
        parallel: usize,
    ) -> Result<Self> {
        let (steering, fit) = plan.steering(engine)?;
        let fit = fit
            .zip(plan.vector_file().map(Path::to_path_buf))
            .map(|(f, p)| (p, f));
        let runners = if parallel <= 1 {
            vec![Runner::new(engine, steering, system, n_predict)?]
        } else {
            let batched = engine.batched(parallel, false)?;
            // Lockstep: every step waits for every runner in a turn (they only compute), so
            // a run's answers do not depend on its threads' timing.
            batched.set_gather(LOCKSTEP);
            let mut runners = Vec::with_capacity(parallel);
            let mut first = Some(steering);
            for _ in 0..parallel {
                let steering = match first.take() {
                    Some(s) => s,
                    None => plan.steering(engine)?.0,
                };
                runners.push(Runner::on(
                    engine,
                    steering,
                    system.clone(),
                    n_predict,
                    Some(batched.clone()),
                )?);
            }
            runners
        };
        Ok(Self {
            runners,
            list: plan.list,
            fit,
        })
    }

    /// The vector file and how it fits the model, when a condition uses one
    /// ([`Fit::message`] is the line to show).
    pub fn fit(&self) -> Option<(&Path, &Fit)> {
        self.fit.as_ref().map(|(p, f)| (p.as_path(), f))
    }

    /// Condition names, in order.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|n| n.name.clone()).collect()
    }

    /// Runs `f` for each condition not yet `done`, with the (first) runner.
    pub fn each(
        &mut self,
        done: &dyn Fn(&str) -> bool,
        f: impl FnMut(&str, &mut Runner<'e>, &Condition) -> Result<()>,
    ) -> Result<()> {
        each(&self.list, &mut self.runners[0], done, f)
    }

    /// What a condition is, in words (for tables and figures).
    pub fn label(&self, name: &str) -> String {
        self.list
            .iter()
            .find(|n| n.name == name)
            .map_or_else(|| name.to_string(), |n| n.label.clone())
    }

    /// The steering configuration of a condition, when it steers.
    pub fn config(&self, name: &str) -> Option<SteerConfig> {
        self.list
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.config.clone())
    }

    /// The (first) runner.
    pub fn runner(&mut self) -> &mut Runner<'e> {
        &mut self.runners[0]
    }
}

/// Runs `f` for each condition of `list` not yet `done`, on `runner`.
fn each<'e>(
    list: &[Named],
    runner: &mut Runner<'e>,
    done: &dyn Fn(&str) -> bool,
    mut f: impl FnMut(&str, &mut Runner<'e>, &Condition) -> Result<()>,
) -> Result<()> {
    for n in list {
        if !done(&n.name) {
            f(&n.name, runner, &n.condition)?;
        }
    }
    Ok(())
}

/// What one item's run is given: the item, a runner, the conditions and which of them the
/// journal already holds for the item.
type ItemRun<'a, 'e, T> =
    dyn Fn(&Item, &mut Runner<'e>, &[Named], &dyn Fn(&str) -> bool) -> Result<Vec<T>> + Sync + 'a;

/// Runs every item under every condition not yet in `journal`: `run` gives the records of one
/// item; they are appended once the item is finished. With several runners, items are run
/// that many at a time (their records are appended as they finish). Returns the records of
/// these items and conditions, earlier runs' included.
fn journaled<'e, T: Keyed + Serialize + DeserializeOwned + Clone + Send>(
    items: &[Item],
    conds: &mut Conditions<'e>,
    journal: &mut Journal<T>,
    run: &ItemRun<'_, 'e, T>,
) -> Result<Vec<T>> {
    let names = conds.names();
    let finished = |j: &Journal<T>, id: &str| names.iter().all(|c| j.is_done(id, c));
    let done = items.iter().filter(|i| finished(journal, &i.id)).count();
    let mut bar = Progress::new("items", items.len(), done);
    // Per item still to run, the conditions the journal already holds.
    let todo: Vec<(&Item, Vec<String>)> = items
        .iter()
        .filter(|i| !finished(journal, &i.id))
        .map(|i| {
            let held = names
                .iter()
                .filter(|c| journal.is_done(&i.id, c))
                .cloned()
                .collect();
            (i, held)
        })
        .collect();
    let list = &conds.list;
    let lanes = conds.runners.len();
    let failed = AtomicBool::new(false);
    let mut first_error = None;
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<Result<Vec<T>>>();
        // Runner k takes items k, k + lanes, ...; every runner is waited for from before its
        // first item to after its last, so the lanes move in lockstep: which item meets which
        // in a step is fixed, and so are the answers.
        let guards: Vec<Busy> = conds.runners.iter().map(Runner::busy).collect();
        for ((k, runner), guard) in conds.runners.iter_mut().enumerate().zip(guards) {
            let (tx, todo, failed) = (tx.clone(), &todo, &failed);
            s.spawn(move || {
                let _guard = guard;
                for (item, held) in todo.iter().skip(k).step_by(lanes) {
                    if failed.load(Ordering::SeqCst) {
                        break;
                    }
                    let out = run(item, runner, list, &|c: &str| held.iter().any(|h| h == c));
                    if out.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    if tx.send(out).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for out in rx {
            match out.and_then(|records| records.into_iter().try_for_each(|r| journal.push(r))) {
                Ok(()) => bar.inc(),
                Err(e) => {
                    failed.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    Ok(journal.select(&ids, &names))
}

/// Answers every item under every condition not yet in `journal`, judging safety (`judge`, else
/// refusal phrases); returns the records of these items and conditions.
pub fn run_safety(
    items: &[Item],
    conds: &mut Conditions<'_>,
    journal: &mut Journal<SafetyRecord>,
    judge: Option<&LlmJudge>,
) -> Result<Vec<SafetyRecord>> {
    journaled(items, conds, journal, &|item, runner, list, done| {
        let mut new = Vec::new();
        each(list, runner, done, |name, runner, condition| {
            let out = runner.run(item, condition)?;
            let (verdict, judge_output) = match judge {
                None => (refusal_verdict(&out.text), None),
                Some(j) => {
                    let (v, raw) = j.judge(&item.prompt, &out.text)?;
                    (v, Some(raw))
                }
            };
            new.push(SafetyRecord {
                id: item.id.clone(),
                condition: name.to_string(),
                refused: is_refusal(&out.text),
                response: out.text,
                verdict,
                judge_output,
                tokens: out.tokens.len(),
                ms: out.ms,
            });
            Ok(())
        })?;
        Ok(new)
    })
}

/// Measures utility of every item under every condition not yet in `journal`; returns the
/// records of these items and conditions.
pub fn run_utility(
    items: &[Item],
    conds: &mut Conditions<'_>,
    journal: &mut Journal<UtilityRecord>,
) -> Result<Vec<UtilityRecord>> {
    journaled(items, conds, journal, &|item, runner, list, done| {
        let mut new = Vec::new();
        each(list, runner, done, |name, runner, condition| {
            let u = runner.utility(item, condition)?;
            new.push(UtilityRecord {
                id: item.id.clone(),
                condition: name.to_string(),
                refused: is_refusal(&u.response),
                response: u.response,
                ref_logprob: u.reference.map(|r| r.0),
                ref_tokens: u.reference.map(|r| r.1),
                choice: u.choice,
                correct: u.choice.zip(item.answer).map(|(c, a)| c == a),
                ms: u.ms,
            });
            Ok(())
        })?;
        Ok(new)
    })
}

/// Compares every item's answer under every condition not yet in `journal` with its text-only
/// answer (the reference, not a condition); returns the records of these items and conditions.
pub fn run_fidelity(
    items: &[Item],
    conds: &mut Conditions<'_>,
    journal: &mut Journal<FidelityRecord>,
) -> Result<Vec<FidelityRecord>> {
    journaled(items, conds, journal, &|item, runner, list, done| {
        let text = runner.run(item, &Condition::Text)?;
        let mut new = Vec::new();
        each(list, runner, done, |name, runner, condition| {
            let out = runner.run(item, condition)?;
            new.push(FidelityRecord {
                id: item.id.clone(),
                condition: name.to_string(),
                fidelity: compare(&text, &out),
                response: out.text,
            });
            Ok(())
        })?;
        Ok(new)
    })
}

/// Writes `<out>/<name>-summary.json` (the summaries, pretty JSON) and `<out>/<name>-summary.md`
/// (`markdown`) atomically; returns the JSON.
pub fn publish<S: Serialize>(
    out: &Path,
    name: &str,
    summaries: &S,
    markdown: &str,
) -> Result<String> {
    let body = serde_json::to_string_pretty(summaries)
        .map_err(|e| crate::Error::Invalid(format!("cannot write the {name} summary: {e}")))?;
    crate::atomic::write(&out.join(format!("{name}-summary.json")), body.as_bytes())?;
    crate::atomic::write(&out.join(format!("{name}-summary.md")), markdown.as_bytes())?;
    Ok(body)
}
