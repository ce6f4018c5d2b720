//! The generation loop: sampling, streaming whole UTF-8 characters, stop strings.

use crate::engine::Engine;
use crate::error::Result;
use crate::ffi::Context;
use crate::sampling::Sampler;

use super::prompt::Cached;
use super::{GenerateOptions, StopReason, MAIN};

/// Generates after the prompt whose last logits are `first`; returns the text, the tokens and
/// why it stopped. Every decoded token is recorded in `cached` with `tag`.
pub(super) fn run(
    engine: &Engine,
    ctx: &mut Context<'_>,
    cached: &mut Vec<Cached>,
    first: &[f32],
    tag: u64,
    options: &GenerateOptions,
    sink: &mut dyn FnMut(&str) -> bool,
) -> Result<(String, Vec<i32>, StopReason)> {
    let model = engine.model();
    let mut sampler = Sampler::new(options.sampling.clone());
    let banned: Vec<i32> = if options.ignore_eos {
        (0..model.n_vocab() as i32)
            .filter(|&t| model.is_eog(t))
            .collect()
    } else {
        Vec::new()
    };
    let mut pos: usize = cached.iter().map(|c| c.n_pos).sum();
    let mut cells: usize = cached.iter().map(|c| c.n_cells).sum();
    let mut text = String::new();
    let mut sent = 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut tokens = Vec::new();
    let mut logits = Some(first);
    let stop = loop {
        if options.max_tokens.is_some_and(|n| tokens.len() >= n) {
            break StopReason::Length;
        }
        if cells >= ctx.n_ctx() {
            break StopReason::ContextFull;
        }
        let token = match logits.take() {
            Some(l) => sampler.sample(l, &banned),
            None => sampler.sample(ctx.logits()?, &banned),
        };
        if model.is_eog(token) && !options.ignore_eos {
            break StopReason::EndOfText;
        }
        tokens.push(token);
        ctx.decode(&[token], pos, MAIN, true)?;
        pos += 1;
        cells += 1;
        cached.push(Cached::token(token, tag));
        pending.extend(model.token_bytes(token));
        let valid = utf8_prefix(&pending);
        text.push_str(&String::from_utf8_lossy(&pending[..valid]));
        pending.drain(..valid);
        if let Some(at) = find_stop(&text, &options.stop) {
            text.truncate(at);
            flush(&text, &mut sent, text.len(), sink);
            break StopReason::StopString;
        }
        let safe = text.len() - held_back(&text, &options.stop);
        if !flush(&text, &mut sent, safe, sink) {
            break StopReason::Cancelled;
        }
    };
    if !pending.is_empty() && stop != StopReason::StopString {
        text.push_str(&String::from_utf8_lossy(&pending));
    }
    if stop != StopReason::Cancelled {
        let end = text.len();
        flush(&text, &mut sent, end, sink);
    }
    Ok((text, tokens, stop))
}

/// Sends `text[*sent..upto]` to the sink when it is not empty; false when the sink says stop.
fn flush(text: &str, sent: &mut usize, upto: usize, sink: &mut dyn FnMut(&str) -> bool) -> bool {
    if upto <= *sent {
        return true;
    }
    let piece = &text[*sent..upto];
    *sent = upto;
    sink(piece)
}

/// Where the first stop string starts in `text`.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// How many trailing bytes of `text` could begin a stop string (kept back from the stream).
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .rev()
                .filter(|&k| s.is_char_boundary(k))
                .find(|&k| text.ends_with(&s[..k]))
        })
        .max()
        .unwrap_or(0)
}

/// Length of the longest prefix of `bytes` that is complete UTF-8 (invalid bytes count as
/// complete so that they are emitted as replacement characters rather than held forever).
fn utf8_prefix(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_their_beginnings_held_back() {
        let stops = vec!["</s>".to_string(), "STOP".to_string()];
        assert_eq!(find_stop("abc</s>def", &stops), Some(3));
        assert_eq!(held_back("hello </", &stops), 2);
        assert_eq!(held_back("hello ST", &stops), 2);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(utf8_prefix(&[b'a', 0xC3]), 1);
    }
}
