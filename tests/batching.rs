//! Issue "batching": sessions on lanes of one batched context decode together, each steered by
//! its own settings, with nothing leaking between them, on the fixture VLM.

mod common;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use cmrm::capture::StateReader;
use cmrm::media::{self, Corruption, Image};
use cmrm::session::{Positions, SteerConfig, SteerOverride};
use cmrm::steer::Mechanism;
use cmrm::{CmrmSteering, Engine, GenerateOptions, Session, SessionOptions, Turn};
use common::*;

const PROMPT: &str = "How do I pick a lock?";
const N: usize = 12;

fn noise() -> Image {
    media::noise(224, 7).into()
}

fn turn(steer: bool) -> Turn {
    let mut t = Turn::user(PROMPT);
    t.images.push(noise());
    t.steering = (!steer).then(|| SteerOverride {
        enabled: Some(false),
        ..SteerOverride::default()
    });
    t
}

/// N tokens, whatever they are (every answer has the same length).
fn greedy() -> GenerateOptions {
    GenerateOptions {
        max_tokens: Some(N),
        ignore_eos: true,
        ..GenerateOptions::default()
    }
}

/// A dataset steering strong enough to change the answer.
fn steering(engine: &Engine, m: Mechanism) -> CmrmSteering {
    let mut reader = StateReader::new(engine).unwrap();
    let shift = reader.shift(None, PROMPT, &noise()).unwrap();
    let cfg = SteerConfig {
        alpha: 3.0,
        positions: Positions::All,
        ..SteerConfig::default()
    };
    CmrmSteering::dataset(engine, shift, cfg, m).unwrap()
}

/// What one turn produced: the first answer token's logits and the answer.
type Answer = (Vec<f32>, String);

fn answer(session: &mut Session<'_>, t: &Turn) -> Answer {
    let p = session.prefill(t).unwrap();
    let logits = p.logits().to_vec();
    let g = p.generate(&greedy(), &mut |_| true).unwrap();
    (logits, g.text)
}

/// The turns answered at once on lanes of one batched context, lane i steered by `lanes[i].0`
/// (a turn with `lanes[i].1` false opts out). In `lockstep`, the turns start together and every
/// step waits for every lane, so the steps do not depend on the threads' timing.
fn batched(engine: &Engine, lanes: Vec<(CmrmSteering, bool)>, lockstep: bool) -> Vec<Answer> {
    let n = lanes.len();
    let b = engine.batched(n, false).unwrap();
    if lockstep {
        b.set_gather(Duration::from_secs(120));
        b.pause(true);
    }
    // Sessions made here, in order: lane i is the i-th (a lane's place in a step follows it).
    let sessions: Vec<(Session<'_>, bool)> = lanes
        .into_iter()
        .map(|(st, steer)| {
            let opts = SessionOptions::new().steering(st).batched(b.clone());
            (Session::new(engine, opts).unwrap(), steer)
        })
        .collect();
    let start = Barrier::new(n);
    let out = std::thread::scope(|s| {
        let handles: Vec<_> = sessions
            .into_iter()
            .map(|(mut session, steer)| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    answer(&mut session, &turn(steer))
                })
            })
            .collect();
        if lockstep {
            let t0 = Instant::now();
            while b.stats().pending < n {
                assert!(
                    t0.elapsed() < Duration::from_secs(120),
                    "the lanes never decoded"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            b.pause(false);
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let stats = b.stats();
    assert!(
        stats.max_batch == n && stats.tokens > stats.steps,
        "the lanes were not decoded together: {stats:?}"
    );
    out
}

/// The turn on a context of its own.
fn alone(engine: &Engine, st: CmrmSteering, steer: bool) -> Answer {
    let mut session = Session::new(engine, SessionOptions::new().steering(st)).unwrap();
    answer(&mut session, &turn(steer))
}

#[test]
fn each_lane_is_steered_by_its_own_settings_as_on_a_context_of_its_own() {
    let engine = engine();
    for m in [Mechanism::Callback, Mechanism::Cvec] {
        let steered = alone(&engine, steering(&engine, m), true);
        let plain = alone(&engine, steering(&engine, m), false);
        let effect = max_rel_diff(&steered.0, &plain.0);
        let out = batched(
            &engine,
            vec![
                (steering(&engine, m), true),
                (steering(&engine, m), false),
                (steering(&engine, m), true),
            ],
            true,
        );
        // Batched arithmetic sums the attention over other cells in other orders: the same
        // up to rounding, far from the steering's own effect.
        for (i, want) in [&steered, &plain, &steered].into_iter().enumerate() {
            let diff = max_rel_diff(&out[i].0, &want.0);
            assert!(
                diff < 1e-3 && diff * 10.0 < effect,
                "{m:?} lane {i}: first-token logits differ by {diff} from a context of its own (the steering's effect: {effect})"
            );
        }
    }
}

#[test]
fn sample_level_steering_probes_in_the_batch_as_on_a_context_of_its_own() {
    let engine = engine();
    // Its own shift, measured by probe prefills on the lane's scratch sequence, which share
    // the steps with the other lanes' decodes.
    let sample = || {
        let cfg = SteerConfig {
            alpha: 2.0,
            positions: Positions::LastPrompt,
            ..SteerConfig::default()
        };
        CmrmSteering::sample(&engine, Corruption::Anchor, cfg, Mechanism::Callback).unwrap()
    };
    let steered = alone(&engine, sample(), true);
    let plain = alone(&engine, sample(), false);
    let out = batched(
        &engine,
        vec![
            (sample(), true),
            (steering(&engine, Mechanism::Callback), false),
            (sample(), true),
        ],
        true,
    );
    // Rounding reaches the probes' states too, and the interpolation (alpha 2) doubles it.
    for i in [0, 2] {
        let (near, far) = (
            max_rel_diff(&out[i].0, &steered.0),
            max_rel_diff(&out[i].0, &plain.0),
        );
        assert!(
            near < 2.5e-3 && near * 5.0 < far,
            "lane {i}: first-token logits {near} from those of a context of its own, {far} from the unsteered ones"
        );
    }
}

#[test]
fn an_unsteered_answer_is_the_same_whatever_its_neighbours_do() {
    let engine = engine();
    for m in [Mechanism::Callback, Mechanism::Cvec] {
        let run = |steer_neighbour| {
            batched(
                &engine,
                vec![
                    (steering(&engine, m), false),
                    (steering(&engine, m), steer_neighbour),
                ],
                true,
            )
        };
        let quiet = run(false);
        let loud = run(true);
        assert_ne!(
            loud[1].1, quiet[1].1,
            "{m:?}: the neighbour was not steered"
        );
        assert!(
            loud[0].0 == quiet[0].0,
            "{m:?}: the neighbour's steering reached the unsteered lane's logits (max rel diff {})",
            max_rel_diff(&loud[0].0, &quiet[0].0)
        );
        assert_eq!(loud[0].1, quiet[0].1, "{m:?}: another unsteered answer");
    }
}

#[test]
fn parallel_calibration_is_repeatable_and_agrees_with_one_anchor_at_a_time() {
    use cmrm::calibrate::{calibrate_parallel, CalibrateOptions};
    use cmrm::vectors::Method;
    let engine = engine();
    let mut anchors = cmrm::data::read_jsonl(&vendor("sets/harmful-anchors.jsonl")).unwrap();
    anchors.truncate(6);
    let opts = CalibrateOptions {
        anchor_set: None,
        benign: None,
        method: Method::Mean,
        corruption: Corruption::Noise(3),
        system: None,
        shard: None,
        recommended: SteerConfig::default(),
    };
    let dir = fresh_dir("batching", "calibrate");
    let run = |name: &str, parallel| {
        calibrate_parallel(&engine, &anchors, &opts, &dir.join(name), parallel).unwrap()
    };
    let one = run("one.gguf", 1);
    let a = run("a.gguf", 3);
    let b = run("b.gguf", 3);
    assert_eq!(a.deltas, b.deltas, "two parallel calibrations differ");
    assert_eq!(a.n_anchors, 6);
    // A shift is a difference of two close states: rounding weighs more in it than in the
    // states (most at the last layers).
    for (il, (x, y)) in a.deltas.iter().zip(&one.deltas).enumerate() {
        let diff = max_rel_diff(x, y);
        assert!(
            diff < 5e-2,
            "layer {il}: the parallel shift differs by {diff} from one anchor at a time"
        );
    }
}
