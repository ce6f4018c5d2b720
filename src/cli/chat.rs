//! `cmrm chat`: single-turn (-p) or interactive chat about images, streamed to stdout.

use std::io::{BufRead, Write};

use anyhow::{Context as _, Result};
use clap::Args;

use cmrm::media::{self, Image};
use cmrm::{Engine, GenerateOptions, Generation, Session, SessionOptions, Turn};

use super::steering::SteerArgs;
use super::{ModelArgs, SamplingArgs};

/// Flags of `cmrm chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    steering: SteerArgs,
    /// Image file or data URI (repeatable); goes where the prompt has <__media__>, else first.
    #[arg(help_heading = "Chat", long)]
    image: Vec<String>,
    /// The user's message (single turn); without it, an interactive chat.
    #[arg(help_heading = "Chat", short = 'p', long)]
    prompt: Option<String>,
    /// System message (-sys).
    #[arg(help_heading = "Chat", long = "system-prompt", alias = "system")]
    system: Option<String>,
    /// Interactive chat even when -p is given (-p is then the first message).
    #[arg(help_heading = "Chat", long)]
    conversation: bool,
    /// Do not process escapes (\\n, \\t, \\xHH, ...) in -p (llama.cpp processes them).
    #[arg(help_heading = "Chat", long = "no-escape")]
    no_escape: bool,
}

/// llama-mtmd-cli's default temperature.
const CHAT_TEMP: f32 = 0.2;

/// Runs the chat.
pub fn run(args: ChatArgs) -> Result<()> {
    let images = load_images(&args.image)?;
    let plan = args.steering.plan(&args.model)?;
    let engine = Engine::load(args.model.engine_options()?)?;
    let mut options = SessionOptions::new();
    if let Some(steering) = args.steering.steering(&plan, &engine)? {
        options = options.steering(steering);
    }
    let mut session = Session::new(&engine, options)?;
    let generate = args.sampling.options(engine.model(), CHAT_TEMP)?;
    let mut chat = Chat {
        session: &mut session,
        args: &args,
        generate,
    };
    match &args.prompt {
        Some(prompt) => {
            let prompt = if args.no_escape {
                prompt.clone()
            } else {
                super::process_escapes(prompt)
            };
            chat.turn(&prompt, images)?;
            if args.conversation {
                chat.interactive(Vec::new())?;
            }
            Ok(())
        }
        None => chat.interactive(images),
    }
}

fn load_images(sources: &[String]) -> Result<Vec<Image>> {
    sources
        .iter()
        .map(|s| media::load_image(s).context("--image"))
        .collect()
}

struct Chat<'a, 'e> {
    session: &'a mut Session<'e>,
    args: &'a ChatArgs,
    generate: GenerateOptions,
}

impl Chat<'_, '_> {
    fn turn(&mut self, text: &str, images: Vec<Image>) -> Result<Generation> {
        let turn = Turn {
            system: self.args.system.clone(),
            text: text.to_string(),
            images,
            steering: None,
            tool_call_id: None,
        };
        let mut out = std::io::stdout().lock();
        let g = self.session.send(&turn, &self.generate, &mut |piece| {
            let _ = out.write_all(piece.as_bytes());
            out.flush().is_ok()
        })?;
        println!();
        if self.args.model.verbose {
            print_timings(&g);
        }
        Ok(g)
    }

    fn interactive(&mut self, mut images: Vec<Image>) -> Result<()> {
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
                self.session.reset();
                images.clear();
                continue;
            }
            if let Some(path) = line.strip_prefix("/image ") {
                match media::load_image(path.trim()) {
                    Ok(img) => images.push(img),
                    Err(e) => super::report(&e.into()),
                }
                continue;
            }
            if let Err(e) = self.turn(line, std::mem::take(&mut images)) {
                super::report(&e);
            }
        }
        Ok(())
    }
}

fn print_timings(g: &Generation) {
    let n = g.tokens.len().max(1) as f64;
    eprintln!(
        "prompt: {} positions ({} reused, {} images) in {:.1} ms | generation: {} tokens in {:.1} ms ({:.2} tok/s) | stop: {:?}",
        g.prompt_positions,
        g.cached_positions,
        g.images,
        g.prompt_ms,
        g.tokens.len(),
        g.gen_ms,
        n * 1e3 / g.gen_ms.max(1e-9),
        g.stop
    );
    if g.steering.applied {
        eprintln!(
            "cmrm: applied {}",
            serde_json::to_string(&g.steering).unwrap_or_default()
        );
    } else if let Some(r) = &g.steering.reason {
        eprintln!("cmrm: not applied ({r})");
    }
}
