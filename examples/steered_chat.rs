//! A steered image turn through the library: the model, its projector and a CMRM vector file
//! made for it, then one question about an image, streamed.
//!
//!   cargo run --release --example steered_chat -- MODEL MMPROJ VECTORS IMAGE "QUESTION"

use std::io::Write;

use cmrm::{
    CmrmSteering, CmrmVectors, Engine, EngineOptions, GenerateOptions, Session, SessionOptions,
    Turn,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, mmproj, vectors, image, question] = args.as_slice() else {
        return Err("usage: steered_chat MODEL MMPROJ VECTORS IMAGE QUESTION".into());
    };
    let engine = Engine::load(EngineOptions::new(model, Some(mmproj.into())))?;
    let path: &std::path::Path = vectors.as_ref();
    let (vectors, fit) = CmrmVectors::load_for(path, &engine, false)?;
    if let Some(line) = fit.message(path) {
        eprintln!("{line}");
    }
    let steering = CmrmSteering::from_vectors(&engine, &vectors)?;
    let mut session = Session::new(&engine, SessionOptions::new().steering(steering))?;
    let turn = Turn::user(question).image(cmrm::media::load(image)?);
    let answer = session.send(&turn, &GenerateOptions::greedy(64), &mut |piece| {
        print!("{piece}");
        std::io::stdout().flush().is_ok()
    })?;
    eprintln!("\nsteering: {}", serde_json::to_string(&answer.steering)?);
    Ok(())
}
