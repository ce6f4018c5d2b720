//! A steered image turn through the library: the model and its projector, the CMRM vector file
//! found beside the model (else each input's own shift, sample-level CMRM), then one question
//! about an image, streamed.
//!
//!   cargo run --release --example steered_chat -- MODEL MMPROJ IMAGE "QUESTION" [TOKENS]

use std::io::Write;

use cmrm::session::SteerOverride;
use cmrm::steer::{Mechanism, SteerPlan, VectorQuery};
use cmrm::{Engine, EngineOptions, GenerateOptions, Session, SessionOptions, Turn};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, mmproj, image, question, tokens) = match args.as_slice() {
        [m, p, i, q] => (m, p, i, q, 64),
        [m, p, i, q, n] => (m, p, i, q, n.parse()?),
        _ => return Err("usage: steered_chat MODEL MMPROJ IMAGE QUESTION [TOKENS]".into()),
    };
    // The vector file beside the model, with its recommended settings; without one,
    // sample-level CMRM (two extra prefills per turn, no file needed).
    let query = VectorQuery::new(model, Some(mmproj.into()));
    let mut plan = SteerPlan::new(&SteerOverride::default(), Mechanism::Cvec, &query)?;
    if !plan.steers() {
        let sample = SteerOverride {
            sample: Some(true),
            ..SteerOverride::default()
        };
        plan = SteerPlan::new(&sample, Mechanism::Cvec, &query)?;
    }
    let engine = Engine::load(EngineOptions::new(model, Some(mmproj.into())))?;
    let (steering, fit) = plan.steering(&engine)?;
    match (fit, plan.located()) {
        (Some(fit), Some(v)) => {
            eprintln!("vectors: {} ({})", v.path.display(), v.reason);
            if let Some(line) = fit.message(&v.path) {
                eprintln!("{line}");
            }
        }
        _ => eprintln!("no vector file beside the model: sample-level CMRM"),
    }
    let mut options = SessionOptions::new();
    if let Some(s) = steering {
        options = options.steering(s);
    }
    let mut session = Session::new(&engine, options)?;
    let turn = Turn::user(question.as_str()).image(cmrm::media::load(image)?);
    let answer = session.send(&turn, &GenerateOptions::greedy(tokens), &mut |piece| {
        print!("{piece}");
        std::io::stdout().flush().is_ok()
    })?;
    eprintln!("\nsteering: {}", serde_json::to_string(&answer.steering)?);
    if !answer.steering.applied {
        return Err("the turn was not steered".into());
    }
    Ok(())
}
