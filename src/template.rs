//! Chat templates: turning a conversation (messages with images) into the prompt text, with a
//! media marker where each image goes.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ffi::{self, Model, Mtmd};
use crate::media::Image;

/// Which template formats conversations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The model's own (`tokenizer.chat_template`), else `chatml`.
    #[default]
    Model,
    /// A llama.cpp built-in template by name (`chatml`, `llama3`, `vicuna`, ...).
    Builtin(String),
}

/// A chat template ready to render.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
}

impl ChatTemplate {
    /// The template `choice` asks for on `model`; fails early on one llama.cpp cannot apply.
    pub fn new(choice: &TemplateChoice, model: &Model) -> Result<Self> {
        let source = match choice {
            TemplateChoice::Model => model.chat_template().unwrap_or_else(|| "chatml".into()),
            TemplateChoice::Builtin(name) => name.clone(),
        };
        let t = Self { source };
        t.render(&[Message {
            role: Role::User,
            text: "hi".into(),
            images: Vec::new(),
        }])?;
        Ok(t)
    }

    /// The prompt for `messages`, ending with the assistant's prefix. Images of a message go
    /// where its text has the media marker, else before the text.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let pairs: Vec<(String, String)> = messages
            .iter()
            .map(|m| (m.role.as_str().to_string(), with_markers(m)))
            .collect();
        ffi::apply_builtin_template(&self.source, &pairs, true).map_err(|e| match e {
            Error::Template(cause) => Error::Template(format!(
                "{cause}; choose a built-in template by name (chatml, llama3, vicuna, ...)"
            )),
            e => e,
        })
    }
}

/// A message's text with one media marker per image: as given when it has markers, else the
/// markers on a line before the text.
pub fn with_markers(m: &Message) -> String {
    let marker = Mtmd::marker();
    if m.images.is_empty() || m.text.contains(&marker) {
        m.text.clone()
    } else {
        format!("{}\n{}", marker.repeat(m.images.len()), m.text)
    }
}

/// A message of the conversation a session holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: Role,
    /// The text; images stand where it has media markers.
    pub text: String,
    /// The images of the message.
    pub images: Vec<Image>,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role's name in chat templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}
