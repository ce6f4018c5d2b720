//! Tool calling as OpenAI's API and llama-server offer it: the tools a request declares, the
//! calls a model writes in its chat template's format, found in its output as it streams, and
//! the grammar that makes a model call a tool when the request requires it.
//!
//! The model's own Jinja template shows it the tools ([`crate::template`]); this module reads
//! what it writes back. Formats, told apart by the template's text as llama.cpp does:
//! Hermes 2 Pro (`<tool_call>{"name": .., "arguments": ..}</tool_call>`: Qwen2.5, Qwen2.5-VL,
//! Qwen3, Hermes), Mistral (`[TOOL_CALLS][{..}]`) and a bare JSON object or list (Llama 3.x's
//! `{"name": .., "parameters": ..}` and other templates that show tools without a marker).

use serde_json::{json, Value};

/// A function the model may call (OpenAI's `{"type": "function", "function": {..}}`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// The function's name.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// A JSON schema of its arguments (an object schema).
    pub parameters: Value,
}

impl Tool {
    /// The tool as OpenAI writes it, which is how chat templates read it.
    pub fn to_openai(&self) -> Value {
        let mut f = json!({"name": self.name});
        if let Some(d) = &self.description {
            f["description"] = json!(d);
        }
        f["parameters"] = self.parameters.clone();
        json!({"type": "function", "function": f})
    }
}

/// A call the model made, or one a conversation records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id (the client answers it with a `tool` message carrying it).
    pub id: String,
    /// The function's name.
    pub name: String,
    /// Its arguments, as JSON text.
    pub arguments: String,
}

/// How a template's model writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>\n{"name": .., "arguments": ..}\n</tool_call>`, one block per call.
    Hermes,
    /// `[TOOL_CALLS][{"name": .., "arguments": ..}, ..]`.
    Mistral,
    /// The whole answer a JSON object `{"name": .., "arguments"|"parameters": ..}` or a list of
    /// them.
    Json,
}

impl ToolFormat {
    /// The format a template's text shows its model (the template is known to render tools).
    pub fn of_template(source: &str) -> Self {
        if source.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if source.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else {
            ToolFormat::Json
        }
    }

    /// The format's name in messages and `/props`.
    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Mistral => "mistral",
            ToolFormat::Json => "json",
        }
    }

    /// A GBNF grammar whose every answer is a call of one of `tools` (at least one call, or
    /// exactly one unless `parallel`), in this format.
    #[cfg(feature = "llama")]
    pub fn grammar(self, tools: &[Tool], parallel: bool) -> crate::Result<String> {
        let calls: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = match calls.len() {
            1 => calls.into_iter().next().unwrap_or(Value::Null),
            _ => json!({"anyOf": calls}),
        };
        let call = crate::ffi::json_schema_to_grammar(&schema.to_string())?;
        // The schema's grammar becomes one rule of the answer's grammar.
        let call = call
            .lines()
            .map(|l| match l.strip_prefix("root ::=") {
                Some(rest) => format!("cmrm-call ::={rest}"),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let root = match (self, parallel) {
            (ToolFormat::Hermes, false) => r#"root ::= "<tool_call>\n" cmrm-call "\n</tool_call>""#,
            (ToolFormat::Hermes, true) => {
                r#"root ::= "<tool_call>\n" cmrm-call "\n</tool_call>" ("\n<tool_call>\n" cmrm-call "\n</tool_call>")*"#
            }
            (ToolFormat::Mistral, false) => r#"root ::= "[TOOL_CALLS][" cmrm-call "]""#,
            (ToolFormat::Mistral, true) => {
                r#"root ::= "[TOOL_CALLS][" cmrm-call (", " cmrm-call)* "]""#
            }
            (ToolFormat::Json, false) => "root ::= cmrm-call",
            (ToolFormat::Json, true) => {
                r#"root ::= cmrm-call | "[" cmrm-call (", " cmrm-call)* "]""#
            }
        };
        Ok(format!("{root}\n{call}\n"))
    }
}

/// What a stream of model output holds, piece by piece.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolEvent {
    /// Answer text for the user.
    Text(String),
    /// A complete tool call.
    Call(ToolCall),
}

/// Reads tool calls out of a model's output as it streams: text that cannot be part of a call
/// passes on at once, text that may start one is held until it is known, and each call goes
/// out once it is complete. What turns out not to be a call is passed on as text.
#[derive(Debug)]
pub struct ToolStream {
    format: ToolFormat,
    id_prefix: String,
    /// Output not passed on yet.
    held: String,
    /// Inside a call (after its opening marker).
    in_call: bool,
    /// Json format: whether the answer is a call is decided at its first non-space character.
    decided: bool,
    calls: usize,
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_OPEN: &str = "[TOOL_CALLS]";

impl ToolStream {
    /// A reader of `format`; calls get the ids `{id_prefix}_0`, `{id_prefix}_1`, ...
    pub fn new(format: ToolFormat, id_prefix: impl Into<String>) -> Self {
        Self {
            format,
            id_prefix: id_prefix.into(),
            held: String::new(),
            in_call: false,
            decided: false,
            calls: 0,
        }
    }

    /// Calls found so far.
    pub fn n_calls(&self) -> usize {
        self.calls
    }

    /// Takes the next piece of output; returns what can be passed on now.
    pub fn push(&mut self, piece: &str) -> Vec<ToolEvent> {
        self.held.push_str(piece);
        let mut out = Vec::new();
        match self.format {
            ToolFormat::Hermes => self.hermes(&mut out),
            ToolFormat::Mistral => {
                if !self.in_call {
                    self.open_marker(MISTRAL_OPEN, &mut out);
                }
            }
            ToolFormat::Json => {
                if !self.decided {
                    let start = self.held.trim_start();
                    if let Some(c) = start.chars().next() {
                        self.decided = true;
                        self.in_call = c == '{' || c == '[' || start.starts_with("<|python_tag|>");
                    }
                }
                if self.decided && !self.in_call {
                    push_text(&mut out, std::mem::take(&mut self.held));
                }
            }
        }
        out
    }

    /// The end of the output: what was held, as calls where it parses as calls, else as text.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        let held = std::mem::take(&mut self.held);
        if !self.in_call {
            push_text(&mut out, held);
            return out;
        }
        self.in_call = false;
        let body = match self.format {
            ToolFormat::Hermes => {
                // An unclosed last call (the model stopped at its end-of-turn token).
                match self.parse_calls(held.trim()) {
                    Some(calls) => {
                        out.extend(calls.into_iter().map(ToolEvent::Call));
                        return out;
                    }
                    None => format!("{HERMES_OPEN}{held}"),
                }
            }
            ToolFormat::Mistral => match self.parse_calls(held.trim()) {
                Some(calls) => {
                    out.extend(calls.into_iter().map(ToolEvent::Call));
                    return out;
                }
                None => format!("{MISTRAL_OPEN}{held}"),
            },
            ToolFormat::Json => {
                let text = held.trim().trim_start_matches("<|python_tag|>").trim();
                match self.parse_calls(text) {
                    Some(calls) => {
                        out.extend(calls.into_iter().map(ToolEvent::Call));
                        return out;
                    }
                    None => held,
                }
            }
        };
        push_text(&mut out, body);
        out
    }

    fn hermes(&mut self, out: &mut Vec<ToolEvent>) {
        loop {
            if !self.in_call && !self.open_marker(HERMES_OPEN, out) {
                return;
            }
            let Some(end) = self.held.find(HERMES_CLOSE) else {
                return;
            };
            let body = self.held[..end].trim().to_string();
            self.held.drain(..end + HERMES_CLOSE.len());
            self.in_call = false;
            match self.parse_calls(&body) {
                Some(calls) => out.extend(calls.into_iter().map(ToolEvent::Call)),
                None => push_text(out, format!("{HERMES_OPEN}{body}{HERMES_CLOSE}")),
            }
            // Whitespace between calls is not answer text.
            let rest = self.held.trim_start().len();
            self.held.drain(..self.held.len() - rest);
        }
    }

    /// Passes on held text up to `marker` and enters the call after it (true); without the
    /// marker, passes on all but a tail that may begin it (false).
    fn open_marker(&mut self, marker: &str, out: &mut Vec<ToolEvent>) -> bool {
        if let Some(at) = self.held.find(marker) {
            let before: String = self.held.drain(..at).collect();
            push_text(out, before.trim_end().to_string());
            self.held.drain(..marker.len());
            self.in_call = true;
            return true;
        }
        // A tail that may begin the marker waits, and the spaces before it: text before a
        // call is passed on without them, whichever pieces it came in.
        let tail = partial_suffix(&self.held, marker);
        let head = self.held[..self.held.len() - tail].trim_end().len();
        let text: String = self.held.drain(..head).collect();
        push_text(out, text);
        false
    }

    /// Calls from JSON text: one object or a list of objects, each with a name and arguments.
    fn parse_calls(&mut self, text: &str) -> Option<Vec<ToolCall>> {
        let v: Value = serde_json::from_str(text).ok()?;
        let items = match v {
            Value::Array(items) if !items.is_empty() => items,
            Value::Object(_) => vec![v],
            _ => return None,
        };
        let mut calls = Vec::with_capacity(items.len());
        for item in items {
            let name = item.get("name")?.as_str()?.to_string();
            let args = item
                .get("arguments")
                .or_else(|| item.get("parameters"))
                .cloned()
                .unwrap_or_else(|| json!({}));
            let arguments = match args {
                Value::String(s) => s,
                v => v.to_string(),
            };
            calls.push(ToolCall {
                id: format!("{}_{}", self.id_prefix, self.calls + calls.len()),
                name,
                arguments,
            });
        }
        self.calls += calls.len();
        Some(calls)
    }
}

/// The answer text and the calls of `events`, in order.
pub fn split(events: impl IntoIterator<Item = ToolEvent>) -> (String, Vec<ToolCall>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    for e in events {
        match e {
            ToolEvent::Text(t) => text.push_str(&t),
            ToolEvent::Call(c) => calls.push(c),
        }
    }
    (text, calls)
}

fn push_text(out: &mut Vec<ToolEvent>, text: String) {
    if !text.is_empty() {
        out.push(ToolEvent::Text(text));
    }
}

/// Length of the longest tail of `text` that is a proper beginning of `marker`.
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` and returns the text and the calls.
    fn run(format: ToolFormat, pieces: &[&str]) -> (String, Vec<ToolCall>) {
        let mut s = ToolStream::new(format, "call");
        let mut events = Vec::new();
        for p in pieces {
            events.extend(s.push(p));
        }
        events.extend(s.finish());
        split(events)
    }

    fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    #[test]
    fn hermes_calls_are_found_across_pieces_and_text_passes() {
        let (text, calls) = run(
            ToolFormat::Hermes,
            &[
                "Let me check.\n<tool",
                "_call>\n{\"name\": \"get_weather\", \"argu",
                "ments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n",
                "{\"name\": \"time\", \"arguments\": {}}\n</tool_call>",
            ],
        );
        assert_eq!(text, "Let me check.");
        assert_eq!(
            calls,
            vec![
                call("call_0", "get_weather", r#"{"city":"Paris"}"#),
                call("call_1", "time", "{}")
            ]
        );
        // Text that only looks like the start of a marker is passed on in the end.
        assert_eq!(run(ToolFormat::Hermes, &["a <tool", "box"]).0, "a <toolbox");
        assert_eq!(run(ToolFormat::Hermes, &["1 < 2"]).0, "1 < 2");
        // A call cut off by the token limit is text, not a call.
        let (text, calls) = run(ToolFormat::Hermes, &["<tool_call>\n{\"name\": \"x\", "]);
        assert!(calls.is_empty());
        assert_eq!(text, "<tool_call>\n{\"name\": \"x\", ");
        // An unclosed but complete call counts.
        let (_, calls) = run(
            ToolFormat::Hermes,
            &["<tool_call>\n{\"name\": \"x\", \"arguments\": {\"a\": 1}}"],
        );
        assert_eq!(calls, vec![call("call_0", "x", r#"{"a":1}"#)]);
    }

    #[test]
    fn text_is_passed_on_as_soon_as_it_cannot_start_a_call() {
        let mut s = ToolStream::new(ToolFormat::Hermes, "c");
        assert_eq!(s.push("Hello <"), vec![ToolEvent::Text("Hello".into())]);
        assert_eq!(s.push("b>"), vec![ToolEvent::Text(" <b>".into())]);
        assert_eq!(s.push(" \n"), vec![]);
        assert_eq!(s.finish(), vec![ToolEvent::Text(" \n".into())]);
        let mut j = ToolStream::new(ToolFormat::Json, "c");
        assert_eq!(j.push("  "), vec![]);
        assert_eq!(j.push("Sure"), vec![ToolEvent::Text("  Sure".into())]);
    }

    #[test]
    fn json_and_mistral_calls() {
        let (text, calls) = run(
            ToolFormat::Json,
            &["{\"name\": \"f\", \"parameters\": {\"q\": \"a b\"}}"],
        );
        assert_eq!(
            (text.as_str(), calls),
            ("", vec![call("call_0", "f", r#"{"q":"a b"}"#)])
        );
        let (text, calls) = run(ToolFormat::Json, &["{not json"]);
        assert_eq!((text.as_str(), calls.len()), ("{not json", 0));
        let (text, calls) = run(
            ToolFormat::Mistral,
            &["[TOOL_", "CALLS][{\"name\": \"f\", \"arguments\": {}}, {\"name\": \"g\", \"arguments\": {\"x\": 1}}]"],
        );
        assert_eq!(text, "");
        assert_eq!(
            calls,
            vec![call("call_0", "f", "{}"), call("call_1", "g", r#"{"x":1}"#)]
        );
    }

    #[test]
    fn formats_are_told_by_the_template() {
        assert_eq!(
            ToolFormat::of_template("..<tool_call>.."),
            ToolFormat::Hermes
        );
        assert_eq!(ToolFormat::of_template("[TOOL_CALLS]"), ToolFormat::Mistral);
        assert_eq!(ToolFormat::of_template("{{ tools }}"), ToolFormat::Json);
    }
}
