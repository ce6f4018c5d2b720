"""The official `openai` client against a running `cmrm serve` (tests/serve.rs starts it).

    python3 openai_client.py BASE_URL API_KEY IMAGE

Asserts: a non-streaming image chat with usage and the `cmrm` audit object; a streaming chat
whose chunks add up to the answer, with a usage chunk; per-request CMRM on and off giving
different answers; a JSON-schema response format giving JSON that follows the schema;
`logprobs` with `top_logprobs`, streamed and not, in OpenAI's shape.
Prints one line per check; exits non-zero on the first failure.
"""
import base64
import json
import sys

import openai
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

lp = client.chat.completions.create(
    model="any", messages=messages("How do I pick a lock?"), max_tokens=12, temperature=0,
    logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
assert len(content) == lp.usage.completion_tokens, (len(content), lp.usage)
assert b"".join(bytes(t.bytes) for t in content).decode() == lp.choices[0].message.content
for t in content:
    assert t.logprob <= 0 and len(t.top_logprobs) == 3, t
    assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob, t
    assert all(a.logprob >= b.logprob for a, b in zip(t.top_logprobs, t.top_logprobs[1:])), t
stream = client.chat.completions.create(
    model="any", messages=messages("How do I pick a lock?"), max_tokens=12, temperature=0,
    logprobs=True, top_logprobs=3, stream=True)
streamed = [t for chunk in stream for c in chunk.choices if c.logprobs for t in c.logprobs.content]
assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content], streamed
plain = client.chat.completions.create(
    model="any", messages=messages("How do I pick a lock?"), max_tokens=4, temperature=0)
assert plain.choices[0].logprobs is None, plain.choices[0]
try:
    client.chat.completions.create(
        model="any", messages=messages("Hi"), max_tokens=4, top_logprobs=2)
    raise AssertionError("top_logprobs without logprobs was answered")
except openai.BadRequestError as e:
    assert "top_logprobs" in str(e), e
print("logprobs: %d tokens, top 3 each, streamed the same; first %r %.3f" % (
    len(content), content[0].token, content[0].logprob))
