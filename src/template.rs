//! Chat templates, rendered as llama.cpp renders them: the model's own Jinja template through
//! minijinja (llama.cpp's `--jinja`, the default of llama-server) with the variables and
//! conventions llama.cpp uses, or llama.cpp's built-in templates (`--no-jinja`, the default of
//! llama-mtmd-cli). Images stand in the text as the media marker.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ffi::{self, Model, Mtmd};
use crate::media::Image;

/// Which template source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The model's own (`tokenizer.chat_template`), else ChatML.
    #[default]
    Model,
    /// A name or template text given by the user (`--chat-template`): with Jinja it is the
    /// template itself (`chatml` is understood as ChatML), without it a llama.cpp built-in name.
    Named(String),
    /// The text of a template file (`--chat-template-file`).
    File(String),
}

/// How conversations are formatted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateOptions {
    /// Which template.
    pub choice: TemplateChoice,
    /// Render it as Jinja (llama.cpp's `--jinja`) instead of llama.cpp's built-in matcher.
    pub jinja: bool,
}

/// ChatML as llama.cpp writes it in Jinja (its fallback).
const CHATML: &str = "{%- for message in messages -%}\n  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n  {{- '<|im_start|>assistant\\n' -}}\n{%- endif -%}";

/// A chat template ready to render.
pub struct ChatTemplate {
    kind: Kind,
}

enum Kind {
    /// llama.cpp's built-in templates (`llama_chat_apply_template`), by name or detected from
    /// a template's text.
    Builtin(String),
    /// A Jinja template.
    Jinja(Box<Jinja>),
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Builtin(s) => write!(f, "ChatTemplate::Builtin({})", s.len()),
            Kind::Jinja(_) => f.write_str("ChatTemplate::Jinja"),
        }
    }
}

struct Jinja {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
    add_bos: bool,
    add_eos: bool,
    /// The template reads message content only as a list of typed parts.
    typed_content: bool,
    /// The template has no system role; system text is merged into the next message.
    merge_system: bool,
}

impl ChatTemplate {
    /// The template `options` ask for on `model`; fails early on one that cannot render.
    pub fn new(options: &TemplateOptions, model: &Model) -> Result<Self> {
        let source = match &options.choice {
            TemplateChoice::Model => model.chat_template(),
            TemplateChoice::Named(n) | TemplateChoice::File(n) => Some(n.clone()),
        };
        let kind = if options.jinja {
            let source = match source.as_deref() {
                None | Some("chatml") => CHATML.to_string(),
                Some(s) => s.to_string(),
            };
            Kind::Jinja(Box::new(Jinja::new(source, model)?))
        } else {
            Kind::Builtin(source.unwrap_or_else(|| "chatml".into()))
        };
        let t = Self { kind };
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
        match &self.kind {
            Kind::Builtin(source) => {
                let pairs: Vec<(String, String)> = messages
                    .iter()
                    .map(|m| (m.role.as_str().to_string(), with_markers(m)))
                    .collect();
                ffi::apply_builtin_template(source, &pairs, true).map_err(|e| match e {
                    Error::Template(cause) => Error::Template(format!(
                        "{cause}; choose a built-in template by name (chatml, llama3, vicuna, ...) or render the model's template with --jinja"
                    )),
                    e => e,
                })
            }
            Kind::Jinja(j) => j.render(messages),
        }
    }
}

impl Jinja {
    fn new(source: String, model: &Model) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(false)
                .build()
                .map_err(|e| Error::Template(e.to_string()))?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| {
            strftime(&fmt, crate::clock::now_utc())
        });
        env.add_template_owned("chat", source)
            .map_err(|e| Error::Template(format!("the template does not parse: {e:#}")))?;
        let token_text = |t: Option<i32>| {
            t.map(|t| String::from_utf8_lossy(&model.token_bytes(t, true)).into_owned())
                .unwrap_or_default()
        };
        let mut j = Self {
            env,
            bos: token_text(model.bos()),
            eos: token_text(model.eos()),
            add_bos: model.add_bos(),
            add_eos: model.add_eos(),
            typed_content: false,
            merge_system: false,
        };
        // What the template accepts, found by rendering probes (as llama.cpp does).
        let probe = |j: &Jinja, sys: bool| {
            let mut msgs = Vec::new();
            if sys {
                msgs.push(Message {
                    role: Role::System,
                    text: "<<system probe>>".into(),
                    images: Vec::new(),
                });
            }
            msgs.push(Message {
                role: Role::User,
                text: "<<user probe>>".into(),
                images: Vec::new(),
            });
            j.render_raw(&msgs).ok()
        };
        if !probe(&j, false).is_some_and(|o| o.contains("<<user probe>>")) {
            j.typed_content = true;
            if !probe(&j, false).is_some_and(|o| o.contains("<<user probe>>")) {
                return Err(Error::Template(
                    "the template renders no message content (neither text nor typed parts)".into(),
                ));
            }
        }
        if !probe(&j, true).is_some_and(|o| o.contains("<<system probe>>")) {
            j.merge_system = true;
        }
        Ok(j)
    }

    fn render(&self, messages: &[Message]) -> Result<String> {
        let mut out = self.render_raw(messages)?;
        if self.add_bos && !self.bos.is_empty() && out.starts_with(&self.bos) {
            out.drain(..self.bos.len());
        }
        if self.add_eos && !self.eos.is_empty() && out.ends_with(&self.eos) {
            out.truncate(out.len() - self.eos.len());
        }
        Ok(out)
    }

    fn render_raw(&self, messages: &[Message]) -> Result<String> {
        let mut list: Vec<(Role, String)> = Vec::new();
        let mut pending_system: Option<String> = None;
        for m in messages {
            let text = with_markers(m);
            if m.role == Role::System && self.merge_system {
                pending_system = Some(text);
                continue;
            }
            match pending_system.take() {
                Some(sys) => list.push((m.role, format!("{sys}\n{text}"))),
                None => list.push((m.role, text)),
            }
        }
        if let Some(sys) = pending_system {
            list.push((Role::User, sys));
        }
        let msgs: Vec<minijinja::Value> = list
            .iter()
            .map(|(role, text)| {
                let content = if self.typed_content {
                    minijinja::Value::from(minijinja::value::Serde(vec![
                        serde_json::json!({"type": "text", "text": text}),
                    ]))
                } else {
                    minijinja::Value::from(text.as_str())
                };
                minijinja::context! { role => role.as_str(), content => content }
            })
            .collect();
        let now = crate::clock::now_utc();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => msgs,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
            add_generation_prompt => true,
            enable_thinking => true,
            date_string => strftime("%d %b %Y", now).unwrap_or_default(),
            datetime => strftime("%b %d %Y", now).unwrap_or_default(),
        })
        .map_err(|e| Error::Template(format!("the template failed to render: {e:#}")))
    }
}

/// JSON as llama.cpp's Jinja `tojson` writes it: keys in order, `", "` and `": "` separators
/// (`","` with an indent), no HTML escaping, non-ASCII kept.
fn tojson(
    value: minijinja::Value,
    indent: Option<usize>,
) -> std::result::Result<String, minijinja::Error> {
    let v = serde_json::to_value(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    let mut out = String::new();
    write_json(&v, indent, 0, &mut out);
    Ok(out)
}

fn write_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(": ");
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

/// `strftime_now` for templates.
fn strftime(fmt: &str, secs: i64) -> std::result::Result<String, minijinja::Error> {
    crate::clock::strftime(fmt, secs).map_err(|e| {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("strftime_now: {e}"),
        )
    })
}

/// A message's text with one media marker per image: as given when it has markers, else the
/// markers before the text (as llama-mtmd-cli does, with no separator).
pub fn with_markers(m: &Message) -> String {
    let marker = Mtmd::marker();
    if m.images.is_empty() || m.text.contains(&marker) {
        m.text.clone()
    } else {
        format!("{}{}", marker.repeat(m.images.len()), m.text)
    }
}

/// A message of a conversation.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_like_llama_cpp() {
        let v = minijinja::Value::from(minijinja::value::Serde(
            serde_json::json!({"b": [1, "é<>"], "a": {}}),
        ));
        assert_eq!(
            tojson(v.clone(), None).unwrap(),
            r#"{"b": [1, "é<>"], "a": {}}"#
        );
        assert_eq!(
            tojson(v, Some(2)).unwrap(),
            "{\n  \"b\": [\n    1,\n    \"é<>\"\n  ],\n  \"a\": {}\n}"
        );
    }
}
