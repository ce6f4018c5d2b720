//! llama-server's extensions that clients of a llama.cpp server rely on, on a real `cmrm serve`
//! over loopback: `/tokenize` and `/detokenize` round trips, `/props`, the top-level `grammar`
//! and `json_schema` fields constraining the answer, and tool calls through the model's own
//! chat template (`/apply-template`, the official `openai` client).

mod common;
#[path = "common/server.rs"]
mod server;

use serde_json::{json, Value};
use server::*;

fn body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

/// The answer's text of a chat-completions reply.
fn content(reply: &Value) -> &str {
    reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content in {reply}"))
}

#[test]
fn tokenize_detokenize_props_and_slots_answer_as_llama_server() {
    let server = Server::start(&["-c", "512", "--max-tokens", "16", "--parallel", "2"]);
    let text = "Hello world, naïve café!";
    let (st, b) = post(
        &server.url("/tokenize"),
        None,
        &body(json!({"content": text})),
    );
    assert_eq!(st, 200, "{b}");
    let ids: Vec<i64> = b["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert!(ids.len() >= 5, "{b}");
    let (st, d) = post(
        &server.url("/detokenize"),
        None,
        &body(json!({"tokens": ids})),
    );
    assert_eq!(st, 200, "{d}");
    assert_eq!(d["content"], text, "detokenize does not give the text back");
    // With pieces: the pieces, joined, are the text, and their ids are the plain answer's.
    let (st, p) = post(
        &server.url("/tokenize"),
        None,
        &body(json!({"content": text, "with_pieces": true})),
    );
    assert_eq!(st, 200, "{p}");
    let pieces = p["tokens"].as_array().unwrap();
    let mut bytes = Vec::new();
    for (piece, id) in pieces.iter().zip(&ids) {
        assert_eq!(piece["id"].as_i64(), Some(*id), "{piece}");
        match &piece["piece"] {
            Value::String(s) => bytes.extend(s.as_bytes()),
            Value::Array(a) => bytes.extend(a.iter().map(|b| b.as_u64().unwrap() as u8)),
            other => panic!("a piece is {other}"),
        }
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
    // Special-token text is one token unless the client says otherwise.
    let special = |parse: bool| {
        let (st, b) = post(
            &server.url("/tokenize"),
            None,
            &body(json!({"content": "<|im_start|>", "parse_special": parse})),
        );
        assert_eq!(st, 200, "{b}");
        b["tokens"].as_array().unwrap().len()
    };
    assert_eq!(special(true), 1);
    assert!(special(false) > 1);
    // Bad input: named, 400, and the server goes on.
    let (st, b) = post(
        &server.url("/detokenize"),
        None,
        &body(json!({"tokens": [1, -5]})),
    );
    assert_error(st, &b, 400, "tokens[1] = -5");
    let (st, b) = post(
        &server.url("/detokenize"),
        None,
        &body(json!({"tokens": [4_000_000_000_i64]})),
    );
    assert_error(st, &b, 400, "tokens[0]");
    let (st, b) = post(
        &server.url("/tokenize"),
        None,
        &body(json!({"content": "x", "add_bos": true})),
    );
    assert_error(st, &b, 400, "add_bos");
    // /props: the settings a request starts from.
    let (st, props) = get(&server.url("/props"), None);
    assert_eq!(st, 200, "{props}");
    let props: Value = serde_json::from_str(&props).unwrap();
    assert_eq!(
        props["default_generation_settings"]["n_ctx"], 512,
        "{props}"
    );
    assert_eq!(
        props["default_generation_settings"]["params"]["n_predict"], 16,
        "{props}"
    );
    assert_eq!(props["total_slots"], 2, "{props}");
    assert_eq!(props["modalities"]["vision"], true, "{props}");
    assert!(
        props["chat_template"]
            .as_str()
            .is_some_and(|t| t.contains("im_start")),
        "{props}"
    );

    // /slots: each slot, idle, with its context size.
    let (st, slots) = get(&server.url("/slots"), None);
    assert_eq!(st, 200, "{slots}");
    let slots: Value = serde_json::from_str(&slots).unwrap();
    let slots = slots.as_array().unwrap();
    assert_eq!(slots.len(), 2, "{slots:?}");
    for (i, s) in slots.iter().enumerate() {
        assert_eq!(s["id"], i, "{s}");
        assert_eq!(s["n_ctx"], 512, "{s}");
        assert_eq!(s["is_processing"], false, "{s}");
        assert_eq!(s["alive"], true, "{s}");
    }
}

#[test]
fn grammar_and_json_schema_constrain_the_answer() {
    let server = Server::start(&["-c", "512", "--max-tokens", "48"]);
    let chat = server.url("/v1/chat/completions");
    let ask = |extra: Value| {
        let mut b = json!({
            "messages": [{"role": "user", "content": "Is the sky blue? Answer briefly."}],
            "temperature": 0,
        });
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        post(&chat, None, &body(b))
    };
    let (st, free) = ask(json!({}));
    assert_eq!(st, 200, "{free}");
    // A grammar the free answer does not follow: the constrained answer does.
    let (st, b) = ask(json!({"grammar": "root ::= (\"yes\" | \"no\") \"!\""}));
    assert_eq!(st, 200, "{b}");
    assert!(
        ["yes!", "no!"].contains(&content(&b)),
        "the grammar was not applied: {:?} (unconstrained: {:?})",
        content(&b),
        content(&free)
    );
    // A JSON schema: the answer is JSON of that shape.
    let schema = json!({"type": "object", "properties": {"blue": {"type": "boolean"}},
        "required": ["blue"], "additionalProperties": false});
    let (st, b) = ask(json!({"json_schema": schema, "max_tokens": 48}));
    assert_eq!(st, 200, "{b}");
    let v: Value = serde_json::from_str(content(&b))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", content(&b)));
    assert!(v["blue"].is_boolean(), "{v}");
    // Two constraints at once, a grammar that does not parse, a schema that is not an object:
    // 400s that say so.
    let (st, b) = ask(json!({"grammar": "root ::= \"a\"", "json_schema": schema}));
    assert_error(st, &b, 400, "json_schema and grammar");
    let (st, b) = ask(json!({"grammar": "root ::= (("}));
    assert_error(st, &b, 400, "grammar does not parse");
    let (st, b) = ask(json!({"json_schema": "boolean"}));
    assert_error(st, &b, 400, "json_schema must be");
    // The server still answers.
    let (st, b) = ask(json!({}));
    assert_eq!((st, content(&b)), (200, content(&free)));
}

/// A weather tool, as OpenAI's clients declare it.
fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}}})
}

#[test]
fn tools_go_through_the_models_own_template_and_calls_come_back_as_openai_clients_read_them() {
    let qwen = common::fixture("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let tower = common::fixture("mmproj-qwen-synthetic.gguf");
    let server = Server::start_model(&qwen, &tower, &["-c", "2048", "--max-tokens", "64"], &[]);
    let (st, props) = get(&server.url("/props"), None);
    assert_eq!(st, 200);
    let props: Value = serde_json::from_str(&props).unwrap();
    assert_eq!(
        props["chat_template_caps"]["supports_tools"], true,
        "{props}"
    );
    assert_eq!(props["chat_template_caps"]["tool_call_format"], "hermes");
    // The conversation with a call and its result, rendered by Qwen2.5's own template as
    // Hugging Face renders it: the tool's JSON in the system prompt, the call's arguments as
    // an object, the result in <tool_response>.
    let conversation = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C and sunny"},
    ]);
    let (st, b) = post(
        &server.url("/apply-template"),
        None,
        &body(json!({"messages": conversation, "tools": [weather_tool()]})),
    );
    assert_eq!(st, 200, "{b}");
    let prompt = b["prompt"].as_str().unwrap();
    for want in [
        "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Get the current weather in a city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools>",
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n18 C and sunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
    ] {
        assert!(prompt.contains(want), "{want:?} not in the prompt:\n{prompt}");
    }
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt}");
    // tool_choice "none": the model is not shown the tools.
    let question = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    let render = |extra: Value| {
        let mut b = json!({"messages": question});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (st, b) = post(&server.url("/apply-template"), None, &body(b));
        assert_eq!(st, 200, "{b}");
        b["prompt"].as_str().unwrap().to_string()
    };
    let without = render(json!({}));
    assert!(!without.contains("<tools>"), "{without}");
    assert_eq!(
        render(json!({"tools": [weather_tool()], "tool_choice": "none"})),
        without
    );
    // The official client: required and named calls, streamed and not, a result sent back.
    server.run_client("openai_tools.py", &[]);
    // Mistakes get 400s that name the field.
    let chat = server.url("/v1/chat/completions");
    let ask = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "tools": [weather_tool()], "max_tokens": 8});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        post(&chat, None, &body(b))
    };
    let (st, b) =
        ask(json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}));
    assert_error(st, &b, 400, "not among the request's tools");
    let (st, b) = ask(json!({"tool_choice": "required", "json_schema": {"type": "object"}}));
    assert_error(st, &b, 400, "required tool call");
    let (st, b) = ask(json!({"messages": [{"role": "user", "content": "Hi"},
        {"role": "tool", "content": "42"}]}));
    assert_error(st, &b, 400, "tool_call_id");
    let (st, b) = ask(json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]}));
    assert_error(st, &b, 400, "tools[0]");
}

#[test]
fn a_template_that_takes_no_tools_refuses_them_by_name() {
    // SmolLM2's template renders no tools.
    let server = Server::start(&["-c", "512", "--max-tokens", "8"]);
    let (_, props) = get(&server.url("/props"), None);
    let props: Value = serde_json::from_str(&props).unwrap();
    assert_eq!(
        props["chat_template_caps"]["supports_tools"], false,
        "{props}"
    );
    let (st, b) = post(
        &server.url("/v1/chat/completions"),
        None,
        &body(
            json!({"messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "tools": [weather_tool()]}),
        ),
    );
    assert_error(st, &b, 400, "--chat-template-file");
    // tool_choice "none" asks for no tools: answered.
    let (st, b) = post(
        &server.url("/v1/chat/completions"),
        None,
        &body(
            json!({"messages": [{"role": "user", "content": "Weather in Oslo?"}],
            "tools": [weather_tool()], "tool_choice": "none"}),
        ),
    );
    assert_eq!(st, 200, "{b}");
}
