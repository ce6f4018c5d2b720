//! `cmrm chat`: single-turn (-p) or interactive chat about images, streamed to stdout.

use std::io::{BufRead, Write};

use anyhow::{Context as _, Result};
use clap::Args;
use image::RgbImage;

use cmrm::{media, Engine, Generation, NoHooks, Session};

use super::{ModelArgs, SamplingArgs};

/// Flags of `cmrm chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Image file or data URI (repeatable); goes where the prompt has <__media__>, else first.
    #[arg(long)]
    image: Vec<String>,
    /// The user's message (single turn); without it, an interactive chat.
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// System message.
    #[arg(long = "system", alias = "system-prompt")]
    system: Option<String>,
    /// Interactive chat even when -p is given (-p is then the first message).
    #[arg(long)]
    conversation: bool,
}

/// Runs the chat.
pub fn run(args: ChatArgs) -> Result<()> {
    let images = load_images(&args.image)?;
    let engine = Engine::load(args.model.engine_options())?;
    let mut session = engine.session(None)?;
    let system = args.system.as_deref();
    if let Some(prompt) = &args.prompt {
        turn(&mut session, &args, system, prompt, &images)?;
        if !args.conversation {
            return Ok(());
        }
        interactive(&mut session, &args, system, Vec::new())
    } else {
        interactive(&mut session, &args, system, images)
    }
}

fn load_images(sources: &[String]) -> Result<Vec<RgbImage>> {
    sources
        .iter()
        .map(|s| media::load(s).context("--image"))
        .collect()
}

fn turn(
    session: &mut Session<'_>,
    args: &ChatArgs,
    system: Option<&str>,
    text: &str,
    images: &[RgbImage],
) -> Result<Generation> {
    let prompt = session.prepare(system, text, images)?;
    let mut out = std::io::stdout().lock();
    let g = session.answer(
        &prompt,
        &mut NoHooks,
        &args.sampling.params(),
        args.sampling.n_predict,
        args.sampling.ignore_eos,
        &mut |piece| {
            let _ = out.write_all(piece.as_bytes());
            out.flush().is_ok()
        },
    )?;
    println!();
    if args.model.verbose {
        print_timings(&prompt, &g);
    }
    session.push_exchange(system, text, images, &g);
    Ok(g)
}

fn print_timings(prompt: &cmrm::Prompt, g: &Generation) {
    let n = g.tokens.len().max(1) as f64;
    eprintln!(
        "prompt: {} positions ({} images) in {:.1} ms | generation: {} tokens in {:.1} ms ({:.2} tok/s) | stop: {:?}",
        prompt.n_positions(),
        prompt.n_images(),
        g.prompt_ms,
        g.tokens.len(),
        g.gen_ms,
        n * 1e3 / g.gen_ms.max(1e-9),
        g.stop
    );
}

fn interactive(
    session: &mut Session<'_>,
    args: &ChatArgs,
    system: Option<&str>,
    mut images: Vec<RgbImage>,
) -> Result<()> {
    eprintln!("interactive chat: /image PATH adds an image to the next message, /clear forgets, /quit or Ctrl-D ends");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" || line == "/exit" {
            break;
        }
        if line == "/clear" {
            session.reset();
            images.clear();
            continue;
        }
        if let Some(path) = line.strip_prefix("/image ") {
            match media::load(path.trim()) {
                Ok(img) => images.push(img),
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        if let Err(e) = turn(session, args, system, line, &images) {
            eprintln!("error: {e:#}");
        }
        images.clear();
    }
    Ok(())
}
