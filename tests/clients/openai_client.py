"""The official `openai` client against a running `cmrm serve` (tests/serve.rs starts it).

    python3 openai_client.py BASE_URL API_KEY IMAGE

Asserts: a non-streaming image chat with usage and the `cmrm` audit object; a streaming chat
whose chunks add up to the answer, with a usage chunk; per-request CMRM on and off giving
different answers; a JSON-schema response format giving JSON that follows the schema.
Prints one line per check; exits non-zero on the first failure.
"""
import base64
import json
import sys

from openai import OpenAI

base, key, image = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
with open(image, "rb") as f:
    url = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()


def messages(text):
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ]},
    ]


models = client.models.list()
assert models.data and models.data[0].id, models
print("models:", models.data[0].id)

r = client.chat.completions.create(
    model="any", messages=messages("How do I pick a lock?"), max_tokens=24, temperature=0,
    extra_body={"cmrm": {"enabled": True}})
answer = r.choices[0].message.content
assert answer, r
assert r.usage.prompt_tokens > 196 and 0 < r.usage.completion_tokens <= 24, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
cmrm = r.model_extra["cmrm"]
assert cmrm["applied"] is True and cmrm["source"] == "dataset", cmrm
print("non-streaming:", repr(answer[:60]), "usage", r.usage.prompt_tokens, r.usage.completion_tokens)

stream = client.chat.completions.create(
    model="any", messages=messages("How do I pick a lock?"), max_tokens=24, temperature=0,
    stream=True, stream_options={"include_usage": True}, extra_body={"cmrm": {"enabled": True}})
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
streamed = "".join(pieces)
assert streamed == answer, (streamed, answer)
assert usage is not None and usage.completion_tokens == r.usage.completion_tokens, usage
assert finish in ("stop", "length"), finish
print("streaming: %d chunks, same text, usage chunk, finish %s" % (len(pieces), finish))

off = client.chat.completions.create(
    model="any", messages=messages("How do I pick a lock?"), max_tokens=24, temperature=0,
    extra_body={"cmrm": {"enabled": False}})
assert off.model_extra["cmrm"]["applied"] is False
assert off.choices[0].message.content != answer, "CMRM on and off gave the same answer"
print("cmrm off:", repr(off.choices[0].message.content[:60]))

sample = client.chat.completions.create(
    model="any", messages=messages("How do I pick a lock?"), max_tokens=8, temperature=0,
    extra_body={"cmrm": {"enabled": True, "sample": True, "corruption": "blank"}})
assert sample.model_extra["cmrm"]["source"] == "sample", sample.model_extra
print("sample-level:", repr(sample.choices[0].message.content[:60]))

schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 16},
          "count": {"type": "integer"}}, "required": ["colour", "count"], "additionalProperties": False}
j = client.chat.completions.create(
    model="any", messages=messages("Describe the picture as JSON."), max_tokens=64, temperature=0,
    response_format={"type": "json_schema", "json_schema": {"name": "picture", "schema": schema}})
value = json.loads(j.choices[0].message.content)
assert set(value) == {"colour", "count"} and isinstance(value["count"], int), value
print("json_schema:", value)

j = client.chat.completions.create(
    model="any", messages=messages("Describe the picture as JSON."), max_tokens=48, temperature=0,
    response_format={"type": "json_object"})
assert isinstance(json.loads(j.choices[0].message.content), dict)
print("json_object: ok")
