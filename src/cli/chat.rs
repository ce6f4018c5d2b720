//! `cmrm chat`: single-turn (-p) or interactive chat about images, streamed to stdout.

use std::io::{BufRead, Write};

use anyhow::{Context as _, Result};
use clap::Args;
use image::RgbImage;

use cmrm::steer::Steerer;
use cmrm::{media, Engine, Generation, Session};

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
    let mut steerer = args.steering.steerer(&engine)?;
    let mut session = engine.session(steerer.as_ref().and_then(Steerer::graph_hook))?;
    let mut chat = Chat {
        session: &mut session,
        steerer: steerer.as_mut(),
        args: &args,
    };
    if let Some(prompt) = &args.prompt {
        chat.turn(prompt, &images)?;
        if !args.conversation {
            return Ok(());
        }
        chat.interactive(Vec::new())
    } else {
        chat.interactive(images)
    }
}

fn load_images(sources: &[String]) -> Result<Vec<RgbImage>> {
    sources
        .iter()
        .map(|s| media::load(s).context("--image"))
        .collect()
}

struct Chat<'a, 'e> {
    session: &'a mut Session<'e>,
    steerer: Option<&'a mut Steerer<'e>>,
    args: &'a ChatArgs,
}

impl Chat<'_, '_> {
    fn turn(&mut self, text: &str, images: &[RgbImage]) -> Result<Generation> {
        let system = self.args.system.as_deref();
        let mut hooks: Box<dyn cmrm::PromptHooks> = match self.steerer.as_deref_mut() {
            Some(s) => s.turn(system, text, images)?,
            None => Box::new(cmrm::NoHooks),
        };
        let prompt = self.session.prepare(system, text, images)?;
        let mut out = std::io::stdout().lock();
        let sampling = &self.args.sampling;
        let g = self.session.answer(
            &prompt,
            hooks.as_mut(),
            &sampling.params(),
            sampling.n_predict,
            sampling.ignore_eos,
            &mut |piece| {
                let _ = out.write_all(piece.as_bytes());
                out.flush().is_ok()
            },
        )?;
        println!();
        if self.args.model.verbose {
            print_timings(&prompt, &g);
        }
        self.session.push_exchange(system, text, images, &g);
        Ok(g)
    }

    fn interactive(&mut self, mut images: Vec<RgbImage>) -> Result<()> {
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
                match media::load(path.trim()) {
                    Ok(img) => images.push(img),
                    Err(e) => eprintln!("error: {e:#}"),
                }
                continue;
            }
            if let Err(e) = self.turn(line, &images) {
                eprintln!("error: {e:#}");
            }
            images.clear();
        }
        Ok(())
    }
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
