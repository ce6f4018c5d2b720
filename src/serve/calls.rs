//! The tool-calling fields of a request checked as OpenAI checks them: `tools`, `tool_choice`,
//! `parallel_tool_calls`, an assistant message's `tool_calls` and a tool message's
//! `tool_call_id`.

use serde_json::Value;

use super::api::ApiError;
use crate::tools::{Tool, ToolCall};

/// Most tools in one request (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

/// What the request lets the model do with its tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model calls tools or answers, as it chooses (`auto`, the default with tools).
    Auto,
    /// The model calls at least one tool (`required`).
    Required,
    /// The model calls this function (`{"type": "function", "function": {"name": ..}}`).
    Function(String),
}

/// The tools a request offers and how they may be used.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolRequest {
    /// The tools.
    pub tools: Vec<Tool>,
    /// What the model may do.
    pub choice: ToolChoice,
    /// More than one call in an answer (`parallel_tool_calls`, default true).
    pub parallel: bool,
}

impl ToolRequest {
    /// The tools a call must be of: all of them, or the one `tool_choice` names.
    pub fn forced(&self) -> Option<Vec<Tool>> {
        match &self.choice {
            ToolChoice::Auto => None,
            ToolChoice::Required => Some(self.tools.clone()),
            ToolChoice::Function(name) => Some(
                self.tools
                    .iter()
                    .filter(|t| &t.name == name)
                    .cloned()
                    .collect(),
            ),
        }
    }
}

/// The request's tools: `None` without tools or with `tool_choice: "none"` (the model answers
/// in text and is not shown them).
pub fn tool_request(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<ToolRequest>, ApiError> {
    let tools = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_TOOLS {
                return Err(ApiError::invalid(format!(
                    "tools has {} entries; at most {MAX_TOOLS} are accepted (as OpenAI): send fewer",
                    items.len()
                )));
            }
            let tools: Vec<Tool> = items
                .iter()
                .enumerate()
                .map(|(i, t)| tool(i, t))
                .collect::<Result<_, _>>()?;
            if let Some(dup) = tools
                .iter()
                .enumerate()
                .find(|(i, t)| tools[..*i].iter().any(|u| u.name == t.name))
            {
                return Err(ApiError::invalid(format!(
                    "tools[{}]: the function name {:?} is given twice; names must be unique",
                    dup.0, dup.1.name
                )));
            }
            tools
        }
        Some(_) => return Err(ApiError::invalid("tools must be a list of tools")),
    };
    let choice = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Required),
            other => {
                return Err(ApiError::invalid(format!(
                    "tool_choice {other:?} is not none, auto, required or a function"
                )))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(format!(
                    "tool_choice names the function {name:?}, which is not among the request's tools"
                )));
            }
            Some(ToolChoice::Function(name.to_string()))
        }
    };
    if tools.is_empty() {
        return match choice {
            None => Ok(None),
            Some(_) => Err(ApiError::invalid(
                "tool_choice is only allowed when tools are given",
            )),
        };
    }
    Ok(Some(ToolRequest {
        tools,
        choice: choice.unwrap_or(ToolChoice::Auto),
        parallel: parallel.unwrap_or(true),
    }))
}

/// `tools[i]`: `{"type": "function", "function": {"name", "description"?, "parameters"?,
/// "strict"?}}`.
fn tool(i: usize, t: &Value) -> Result<Tool, ApiError> {
    let bad = |what: &str| ApiError::invalid(format!("tools[{i}]: {what}"));
    if t.get("type").and_then(Value::as_str) != Some("function") {
        return Err(bad("type must be \"function\""));
    }
    let f = t
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("function must be an object with a name"))?;
    if let Some(k) = f
        .keys()
        .find(|k| !["name", "description", "parameters", "strict"].contains(&k.as_str()))
    {
        return Err(bad(&format!(
            "function.{k} is not a field of a function (name, description, parameters, strict)"
        )));
    }
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("function.name is missing"))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(bad(&format!(
            "function.name {name:?} must be 1 to 64 letters, digits, underscores or dashes"
        )));
    }
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(bad("function.description must be a string")),
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(bad("function.parameters must be a JSON schema object")),
    };
    Ok(Tool {
        name: name.to_string(),
        description,
        parameters,
    })
}

/// `messages[i].tool_calls` of an assistant message.
pub fn message_calls(i: usize, v: &Value) -> Result<Vec<ToolCall>, ApiError> {
    let bad = |what: String| ApiError::invalid(format!("messages[{i}].tool_calls{what}"));
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(bad(" must be a list of tool calls".into())),
    };
    items
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let field = |path: &[&str]| {
                path.iter()
                    .try_fold(c, |v, k| v.get(k))
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("[{j}].{} must be a string", path.join("."))))
            };
            if c.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad(format!("[{j}].type must be \"function\"")));
            }
            Ok(ToolCall {
                id: field(&["id"])?.to_string(),
                name: field(&["function", "name"])?.to_string(),
                arguments: field(&["function", "arguments"])?.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    }

    #[test]
    fn tools_and_tool_choice_are_checked_as_openai_checks_them() {
        let t = weather();
        let r = tool_request(Some(&t), None, None).unwrap().unwrap();
        assert_eq!((r.choice.clone(), r.parallel), (ToolChoice::Auto, true));
        assert_eq!(r.forced(), None);
        assert_eq!(
            tool_request(Some(&t), Some(&json!("none")), None).unwrap(),
            None
        );
        let f = json!({"type": "function", "function": {"name": "get_weather"}});
        let r = tool_request(Some(&t), Some(&f), Some(false))
            .unwrap()
            .unwrap();
        assert_eq!(r.choice, ToolChoice::Function("get_weather".into()));
        assert_eq!(r.forced().unwrap().len(), 1);
        for (tools, choice, needle) in [
            (t.clone(), json!("always"), "tool_choice \"always\""),
            (
                t.clone(),
                json!({"type": "function", "function": {"name": "nope"}}),
                "not among",
            ),
            (json!([]), json!("auto"), "only allowed when tools"),
            (
                json!([{"type": "function", "function": {"name": "a b"}}]),
                Value::Null,
                "tools[0]",
            ),
            (json!([{"type": "code"}]), Value::Null, "tools[0]: type"),
            (
                json!([{"type": "function", "function": {"name": "f", "params": {}}}]),
                Value::Null,
                "function.params",
            ),
            (json!({"name": "f"}), Value::Null, "list of tools"),
        ] {
            let e = tool_request(Some(&tools), Some(&choice), None).unwrap_err();
            assert!(
                e.message.contains(needle),
                "{tools} {choice}: {}",
                e.message
            );
        }
        let twice = json!([weather()[0], weather()[0]]);
        assert!(tool_request(Some(&twice), None, None)
            .unwrap_err()
            .message
            .contains("twice"));
    }

    #[test]
    fn message_tool_calls_need_id_name_and_arguments() {
        let calls = json!([{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]);
        let c = message_calls(2, &calls).unwrap();
        assert_eq!(
            (c[0].id.as_str(), c[0].name.as_str()),
            ("c1", "get_weather")
        );
        let e = message_calls(2, &json!([{"type": "function", "function": {"name": "f"}}]))
            .unwrap_err();
        assert!(
            e.message.contains("messages[2].tool_calls[0].id"),
            "{}",
            e.message
        );
    }
}
