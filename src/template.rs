//! Chat templates, rendered as llama.cpp renders them: the model's own Jinja template through
//! minijinja (llama.cpp's `--jinja`, the default of llama-server) with the variables and
//! conventions llama.cpp uses, or llama.cpp's built-in templates (`--no-jinja`, the default of
//! llama-mtmd-cli). Images stand in the text as the media marker.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ffi::{self, Model, Mtmd};
use crate::media::Image;
use crate::tools::{Tool, ToolCall, ToolFormat};

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
    /// How its model writes tool calls (`None`: it does not render tools).
    tool_format: Option<ToolFormat>,
    /// It reads a tool call's arguments as an object (`| tojson`), not as JSON text.
    object_arguments: bool,
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
        t.render(&[Message::new(Role::User, "hi")])?;
        Ok(t)
    }

    /// The prompt for `messages`, ending with the assistant's prefix. Images of a message go
    /// where its text has the media marker, else before the text.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        self.render_with_tools(messages, &[])
    }

    /// How the model writes tool calls, when the template shows it tools (a Jinja template
    /// that renders the `tools` it is given); `None`: tools cannot be offered.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        match &self.kind {
            Kind::Builtin(_) => None,
            Kind::Jinja(j) => j.tool_format,
        }
    }

    /// [`ChatTemplate::render`] with `tools` offered to the model; tools need a template with
    /// a [`ChatTemplate::tool_format`].
    pub fn render_with_tools(&self, messages: &[Message], tools: &[Tool]) -> Result<String> {
        if !tools.is_empty() && self.tool_format().is_none() {
            return Err(Error::Template(
                "this chat template does not show the model tools: render the model's own template with --jinja, or give one that takes tools with --chat-template-file".into(),
            ));
        }
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
            Kind::Jinja(j) => j.render(messages, tools),
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
        let format = ToolFormat::of_template(&source);
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
            tool_format: None,
            object_arguments: false,
        };
        // What the template accepts, found by rendering probes (as llama.cpp does).
        let probe = |j: &Jinja, sys: bool| {
            let mut msgs = Vec::new();
            if sys {
                msgs.push(Message::new(Role::System, "<<system probe>>"));
            }
            msgs.push(Message::new(Role::User, "<<user probe>>"));
            j.render_raw(&msgs, &[]).ok()
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
        j.probe_tools(format);
        Ok(j)
    }

    /// Whether the template renders tools and how it reads a call's arguments, found by
    /// rendering probes (as llama.cpp does).
    fn probe_tools(&mut self, format: ToolFormat) {
        let tool = Tool {
            name: "cmrm_probe_tool".into(),
            description: Some("A probe.".into()),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        };
        let user = Message::new(Role::User, "<<user probe>>");
        let shows_tools = self
            .render_raw(std::slice::from_ref(&user), std::slice::from_ref(&tool))
            .is_ok_and(|o| o.contains("cmrm_probe_tool"));
        if !shows_tools {
            return;
        }
        self.tool_format = Some(format);
        let mut call = Message::new(Role::Assistant, "");
        call.tool_calls.push(ToolCall {
            id: "call_0".into(),
            name: "cmrm_probe_tool".into(),
            arguments: r#"{"probe": 1}"#.into(),
        });
        let msgs = [user, call, Message::new(Role::User, "again")];
        let as_text = self.render_raw(&msgs, std::slice::from_ref(&tool));
        // A template that writes the text JSON-escaped (`"{\"probe\"`) wants an object.
        self.object_arguments = !as_text.is_ok_and(|o| o.contains(r#"{"probe": 1}"#));
    }

    fn render(&self, messages: &[Message], tools: &[Tool]) -> Result<String> {
        let mut out = self.render_raw(messages, tools)?;
        if self.add_bos && !self.bos.is_empty() && out.starts_with(&self.bos) {
            out.drain(..self.bos.len());
        }
        if self.add_eos && !self.eos.is_empty() && out.ends_with(&self.eos) {
            out.truncate(out.len() - self.eos.len());
        }
        Ok(out)
    }

    fn render_raw(&self, messages: &[Message], tools: &[Tool]) -> Result<String> {
        let mut list: Vec<(&Message, String)> = Vec::new();
        let mut pending_system: Option<String> = None;
        for m in messages {
            let text = with_markers(m);
            if m.role == Role::System && self.merge_system {
                pending_system = Some(text);
                continue;
            }
            match pending_system.take() {
                Some(sys) => list.push((m, format!("{sys}\n{text}"))),
                None => list.push((m, text)),
            }
        }
        let system_only;
        if let Some(sys) = pending_system {
            system_only = Message::new(Role::User, "");
            list.push((&system_only, sys));
        }
        let msgs: Vec<minijinja::Value> = list
            .iter()
            .map(|(m, text)| {
                let content = if self.typed_content {
                    minijinja::Value::from(minijinja::value::Serde(vec![
                        serde_json::json!({"type": "text", "text": text}),
                    ]))
                } else {
                    minijinja::Value::from(text.as_str())
                };
                let mut msg = serde_json::Map::new();
                msg.insert("role".into(), m.role.as_str().into());
                if !m.tool_calls.is_empty() {
                    msg.insert("tool_calls".into(), self.calls_json(&m.tool_calls));
                }
                if let Some(id) = &m.tool_call_id {
                    msg.insert("tool_call_id".into(), id.as_str().into());
                }
                let fields = minijinja::Value::from(minijinja::value::Serde(msg));
                // Content stays a template value (typed parts or text) beside the JSON fields.
                minijinja::context! { content => content, ..fields }
            })
            .collect();
        let tools: Vec<serde_json::Value> = tools.iter().map(Tool::to_openai).collect();
        let now = crate::clock::now_utc();
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => msgs,
            tools => if tools.is_empty() { minijinja::Value::UNDEFINED } else { minijinja::Value::from(minijinja::value::Serde(tools)) },
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

impl Jinja {
    /// A message's tool calls as OpenAI writes them, the arguments an object where the
    /// template wants one (and they parse).
    fn calls_json(&self, calls: &[ToolCall]) -> serde_json::Value {
        calls
            .iter()
            .map(|c| {
                let arguments = match serde_json::from_str::<serde_json::Value>(&c.arguments) {
                    Ok(v) if self.object_arguments => v,
                    _ => serde_json::Value::from(c.arguments.as_str()),
                };
                serde_json::json!({
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": arguments},
                })
            })
            .collect()
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
    /// Who wrote it.
    pub role: Role,
    /// The text; images stand where it has media markers.
    pub text: String,
    /// The images of the message.
    pub images: Vec<Image>,
    /// An assistant message's tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// A tool message's call (the id of the call it answers).
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message of `role` with `text`, no images and no tool calls.
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            text: text.into(),
            images: Vec::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
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
    /// A tool's result, answering one of the model's calls.
    Tool,
}

impl Role {
    /// The role's name in chat templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
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
