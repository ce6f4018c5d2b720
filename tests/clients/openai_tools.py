"""Tool calling with the official `openai` client against a running `cmrm serve` whose model's
chat template takes tools (tests/serve_api.rs starts it on Qwen2.5 and its own template).

    python3 openai_tools.py BASE_URL

Asserts: `tool_choice="required"` and a named function give a call of a declared tool with
JSON arguments that follow its schema, `finish_reason == "tool_calls"` and no text; the same
request streamed gives the same call through `delta.tool_calls`; the call and a `tool` message
with its result sent back give an answer in text; `tool_choice="none"` answers in text
(tests/serve_api.rs checks that its prompt is the prompt without tools). Prints one line per check; exits non-zero on the first failure.
"""
import json
import sys

from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=120)
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}, {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now", "parameters": {"type": "object", "properties": {}}},
}]
question = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_call(call):
    assert call.type == "function" and call.id, call
    assert call.function.name in ("get_weather", "get_time"), call
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert isinstance(args.get("city"), str), args
    return call.function.name, args


r = client.chat.completions.create(model="any", messages=question, tools=tools,
                                   tool_choice="required", temperature=0, max_tokens=64)
choice = r.choices[0]
assert choice.finish_reason == "tool_calls", choice
assert choice.message.content is None and choice.message.tool_calls, choice.message
calls = [check_call(c) for c in choice.message.tool_calls]
print("required:", calls)

forced = {"type": "function", "function": {"name": "get_weather"}}
r = client.chat.completions.create(model="any", messages=question, tools=tools,
                                   tool_choice=forced, parallel_tool_calls=False,
                                   temperature=0, max_tokens=64)
message = r.choices[0].message
assert r.choices[0].finish_reason == "tool_calls", r
assert len(message.tool_calls) == 1, message
name, args = check_call(message.tool_calls[0])
assert name == "get_weather", name
print("named function:", name, args)

stream = client.chat.completions.create(model="any", messages=question, tools=tools,
                                        tool_choice=forced, parallel_tool_calls=False,
                                        temperature=0, max_tokens=64, stream=True)
streamed, text, finish = {}, "", None
for chunk in stream:
    for c in chunk.choices:
        text += c.delta.content or ""
        for t in c.delta.tool_calls or []:
            s = streamed.setdefault(t.index, {"id": None, "name": "", "arguments": ""})
            s["id"] = t.id or s["id"]
            s["name"] += (t.function.name or "") if t.function else ""
            s["arguments"] += (t.function.arguments or "") if t.function else ""
        finish = c.finish_reason or finish
assert finish == "tool_calls" and text == "", (finish, text)
assert len(streamed) == 1, streamed
assert streamed[0]["name"] == "get_weather", streamed
assert json.loads(streamed[0]["arguments"]) == args, (streamed, args)
print("streamed:", streamed[0]["name"], streamed[0]["arguments"])

call = message.tool_calls[0]
follow = question + [
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": "18 degrees Celsius and sunny"},
]
r = client.chat.completions.create(model="any", messages=follow, tools=tools, tool_choice="none",
                                   temperature=0, max_tokens=32)
assert r.choices[0].message.content and not r.choices[0].message.tool_calls, r
print("after the tool's result:", repr(r.choices[0].message.content[:60]))

none = client.chat.completions.create(model="any", messages=question, tools=tools,
                                      tool_choice="none", temperature=0, max_tokens=24)
assert none.choices[0].message.content and not none.choices[0].message.tool_calls, none
assert none.choices[0].finish_reason != "tool_calls", none
print("tool_choice none: answered in text")
