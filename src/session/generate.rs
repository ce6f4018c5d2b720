//! The generation loop: sampling, streaming whole UTF-8 characters, stop strings.

use crate::engine::Engine;
use crate::error::Result;
use crate::ffi::{Context, Model, Sampler};
use crate::sampling::Sampling;

use super::prompt::Cached;
use super::{GenerateOptions, StopReason, TokenChoice, TokenLogprob, MAIN};

/// What [`run`] generated.
pub(super) struct Generated {
    pub text: String,
    pub tokens: Vec<i32>,
    pub stop: StopReason,
    pub logprobs: Vec<TokenLogprob>,
}

/// Generates after the prompt whose last logits are `first`; returns the text, the tokens,
/// why it stopped and, when asked for, the tokens' log-probabilities. Every decoded token is
/// recorded in `cached` with `tag`.
pub(super) fn run(
    engine: &Engine,
    ctx: &mut Context<'_>,
    cached: &mut Vec<Cached>,
    first: &[f32],
    tag: u64,
    options: &GenerateOptions,
    sink: &mut dyn FnMut(&str, &[TokenLogprob]) -> bool,
) -> Result<Generated> {
    let model = engine.model();
    let banned: Vec<i32> = if options.ignore_eos {
        (0..model.n_vocab() as i32)
            .filter(|&t| model.is_eog(t))
            .collect()
    } else {
        Vec::new()
    };
    let mut chain = match &options.sampling {
        Sampling::Greedy => None,
        Sampling::Chain(p) => {
            // As llama.cpp does for --ignore-eos: every end-of-generation token biased to -inf.
            let mut p = p.clone();
            p.logit_bias
                .extend(banned.iter().map(|&t| (t, f32::NEG_INFINITY)));
            Some(Sampler::new(model, &p)?)
        }
    };
    let mut pos: usize = cached.iter().map(|c| c.n_pos).sum();
    let mut cells: usize = cached.iter().map(|c| c.n_cells).sum();
    let mut text = String::new();
    let mut out = Stream {
        sent: 0,
        probs_sent: 0,
        sink,
    };
    let mut probs: Vec<TokenLogprob> = Vec::new();
    // Where each token of `probs` starts in the answer, in bytes.
    let mut starts: Vec<usize> = Vec::new();
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
        let row = match logits.take() {
            Some(l) => l,
            None => ctx.logits()?,
        };
        let token = match &mut chain {
            Some(s) => s.sample(row)?,
            None => greedy(row, &banned),
        };
        if let Some(s) = &mut chain {
            s.accept(token)?;
        }
        if model.is_eog(token) && !options.ignore_eos {
            break StopReason::EndOfText;
        }
        if let Some(k) = options.logprobs {
            probs.push(scored(model, row, token, k));
            starts.push(text.len() + pending.len());
        }
        tokens.push(token);
        ctx.decode(&[token], pos, MAIN, true)?;
        pos += 1;
        cells += 1;
        cached.push(Cached::token(token, tag));
        pending.extend(piece(model, token));
        let valid = utf8_prefix(&pending);
        text.push_str(&String::from_utf8_lossy(&pending[..valid]));
        pending.drain(..valid);
        if let Some(at) = find_stop(&text, &options.stop) {
            text.truncate(at);
            probs.truncate(starts.partition_point(|&s| s < at));
            out.flush(&text, text.len(), &probs, true);
            break StopReason::StopString;
        }
        let safe = text.len() - held_back(&text, &options.stop);
        if !out.flush(&text, safe, &probs, false) {
            break StopReason::Cancelled;
        }
    };
    if !pending.is_empty() && stop != StopReason::StopString {
        text.push_str(&String::from_utf8_lossy(&pending));
    }
    if stop != StopReason::Cancelled {
        out.flush(&text, text.len(), &probs, true);
    }
    Ok(Generated {
        text,
        tokens,
        stop,
        logprobs: probs,
    })
}

/// The chosen token's log-probability under `logits` and the `k` most likely tokens.
fn scored(model: &Model, logits: &[f32], token: i32, k: usize) -> TokenLogprob {
    let norm = crate::math::log_sum_exp(logits);
    let choice = |t: usize| TokenChoice {
        token: t as i32,
        bytes: piece(model, t as i32),
        logprob: logits[t] - norm,
    };
    // The k largest, kept sorted (k is small: OpenAI allows 20).
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if k == 0 || (best.len() == k && l <= logits[best[k - 1]]) {
            continue;
        }
        let at = best.partition_point(|&b| logits[b] >= l);
        best.insert(at, i);
        best.truncate(k);
    }
    TokenLogprob {
        chosen: choice(token as usize),
        top: best.into_iter().map(choice).collect(),
    }
}

/// The most likely token that is not banned (the first on ties).
fn greedy(logits: &[f32], banned: &[i32]) -> i32 {
    logits
        .iter()
        .enumerate()
        .filter(|(i, _)| !banned.contains(&(*i as i32)))
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &l)| if l > b.1 { (i, l) } else { b },
        )
        .0 as i32
}

/// A token's text as llama.cpp prints it (special tokens rendered).
fn piece(model: &Model, token: i32) -> Vec<u8> {
    model.token_bytes(token, true)
}

/// What the sink has been given.
struct Stream<'s> {
    /// Bytes of the answer sent.
    sent: usize,
    /// Log-probabilities sent.
    probs_sent: usize,
    sink: &'s mut dyn FnMut(&str, &[TokenLogprob]) -> bool,
}

impl Stream<'_> {
    /// Sends `text[sent..upto]` with the log-probabilities not sent yet when the text is not
    /// empty (or, with `last`, when log-probabilities are left); false when the sink says stop.
    fn flush(&mut self, text: &str, upto: usize, probs: &[TokenLogprob], last: bool) -> bool {
        let probs_left = self.probs_sent < probs.len();
        if upto <= self.sent && !(last && probs_left) {
            return true;
        }
        let piece = &text[self.sent.min(upto)..upto];
        let new = &probs[self.probs_sent.min(probs.len())..];
        self.sent = self.sent.max(upto);
        self.probs_sent = probs.len();
        (self.sink)(piece, new)
    }
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
