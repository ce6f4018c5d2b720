//! The values a turn is made of: what the user sends ([`Turn`]), how to answer
//! ([`GenerateOptions`]) and what came back ([`Generation`]).

use serde::Serialize;

use super::steering::{Applied, SteerOverride};
use crate::media::Image;
use crate::sampling::Sampling;
use crate::template::{Message, Role};

/// One user turn: text, images, an optional system message (used when the conversation starts)
/// and optional steering settings for this turn only.
#[derive(Clone, Debug, Default)]
pub struct Turn {
    /// System message; it counts only on the first turn of a conversation.
    pub system: Option<String>,
    /// The user's text. Images go where it has the media marker (`<__media__>`), else before it.
    pub text: String,
    /// The images, in order.
    pub images: Vec<Image>,
    /// This turn's steering settings over the session's.
    pub steering: Option<SteerOverride>,
    /// Set: the turn is a tool's result (role `tool`) answering the model's call with this
    /// id, and `text` is the result.
    pub tool_call_id: Option<String>,
}

impl Turn {
    /// A turn with the user's `text`.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }

    /// The message this turn adds to a conversation: the user's, or a tool's result.
    pub fn message(&self) -> Message {
        let role = if self.tool_call_id.is_some() {
            Role::Tool
        } else {
            Role::User
        };
        Message {
            images: self.images.clone(),
            tool_call_id: self.tool_call_id.clone(),
            ..Message::new(role, self.text.clone())
        }
    }

    /// Adds an image.
    pub fn image(mut self, image: impl Into<Image>) -> Self {
        self.images.push(image.into());
        self
    }

    /// Sets the system message.
    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// Sets this turn's steering settings.
    pub fn steering(mut self, overrides: SteerOverride) -> Self {
        self.steering = Some(overrides);
        self
    }
}

/// How to generate an answer.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    /// How tokens are chosen (greedy by default).
    pub sampling: Sampling,
    /// Largest number of tokens to generate (`None`: until the end of the answer or a full
    /// context).
    pub max_tokens: Option<usize>,
    /// Never stop at end-of-generation tokens.
    pub ignore_eos: bool,
    /// Stop as soon as the answer contains one of these strings (which are not kept).
    pub stop: Vec<String>,
    /// Record each generated token's log-probability under the model's distribution (the
    /// steered logits, before sampling) with this many most likely alternatives (OpenAI's
    /// `logprobs` and `top_logprobs`); `None` records nothing.
    pub logprobs: Option<usize>,
}

impl GenerateOptions {
    /// Greedy decoding of at most `n` tokens.
    pub fn greedy(n: usize) -> Self {
        Self {
            max_tokens: Some(n),
            ..Self::default()
        }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfText,
    /// One of the stop strings appeared.
    StopString,
    /// The token limit was reached.
    Length,
    /// The context is full.
    ContextFull,
    /// The caller's sink asked to stop.
    Cancelled,
}

/// What a turn produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The answer text.
    pub text: String,
    /// The generated tokens.
    pub tokens: Vec<i32>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Positions the prompt took in all (cached and evaluated).
    pub prompt_positions: usize,
    /// Of those, positions reused from the cache.
    pub cached_positions: usize,
    /// Tokens (KV cells: text tokens and image embeddings) the prompt takes in all.
    pub prompt_tokens: usize,
    /// Of those, tokens reused from the cache.
    pub cached_tokens: usize,
    /// Images in the prompt that were evaluated.
    pub images: usize,
    /// Wall time of prompt evaluation (steering's extra prefills included), ms.
    pub prompt_ms: f64,
    /// Wall time of generation, ms.
    pub gen_ms: f64,
    /// What steering did.
    pub steering: Applied,
    /// Each generated token's log-probability, when [`GenerateOptions::logprobs`] asked for
    /// them (tokens after a stop string's start are left out).
    pub logprobs: Vec<TokenLogprob>,
}

/// A token with its log-probability.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenChoice {
    /// The token id.
    pub token: i32,
    /// Its text as bytes (a token may hold part of a UTF-8 character).
    pub bytes: Vec<u8>,
    /// Its natural-log probability.
    pub logprob: f32,
}

/// A generated token's log-probability and the most likely tokens at its place.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token chosen.
    pub chosen: TokenChoice,
    /// The most likely tokens, most likely first ([`GenerateOptions::logprobs`] of them).
    pub top: Vec<TokenChoice>,
}
