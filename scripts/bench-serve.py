"""Benchmark of `cmrm serve` (called by scripts/bench-serve.sh).

For each CMRM mode (off, dataset vectors, sample-level) and concurrency (1, 2, 4 clients on a
server with as many slots), it streams the same image question from every client a few times and
reports, per request, the time to first token seen by the client and the generation speed, and
the total throughput; then the same question through `cmrm chat -v` for the baseline; and the
throughput of 4 clients on 1 slot against 4 slots (N slots must not deliver less than one).

    python3 bench-serve.py CMRM MODEL MMPROJ VECTORS IMAGE THREADS REPEATS
"""
import base64
import json
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

cmrm, model, mmproj, vectors, image, threads, repeats = sys.argv[1:8]
repeats = int(repeats)
N_TOKENS = 64
PROMPT = "Describe this picture in detail."
with open(image, "rb") as f:
    URL = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()


def start_server(slots, extra):
    p = subprocess.Popen(
        [cmrm, "serve", "-m", model, "--mmproj", mmproj, "-t", threads, "--port", "0",
         "--parallel", str(slots), "--queue", "16", "-c", "2048"] + extra,
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        m = re.search(r"listening on (\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)
    raise SystemExit("the server did not start")


COUNTER = iter(range(10**9))


def one(base, cmrm_obj, out):
    # A system message of its own: every request is evaluated whole, as `cmrm chat` evaluates it.
    nonce = f"Request {next(COUNTER)}."
    body = json.dumps({
        "messages": [{"role": "system", "content": nonce}, {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": URL}}, {"type": "text", "text": PROMPT}]}],
        "max_tokens": N_TOKENS, "temperature": 0, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True}, "cmrm": cmrm_obj}).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = None
    usage = timings = None
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                usage, timings = chunk["usage"], chunk.get("timings")
    end = time.perf_counter()
    n = usage["completion_tokens"]
    wall_ms = (end - t0) * 1e3
    overhead = wall_ms - timings["prompt_ms"] - timings["predicted_ms"]
    out.append({"ttft": (first - t0) * 1e3, "tps": (n - 1) / max(end - first, 1e-9), "n": n,
                "server_prompt_ms": timings["prompt_ms"], "wall": end - t0,
                "server_tps": timings["predicted_per_second"],
                "overhead": overhead, "overhead_pct": 100 * overhead / wall_ms})


def run(base, clients, cmrm_obj):
    results = []
    t0 = time.perf_counter()
    for _ in range(repeats):
        ts = [threading.Thread(target=one, args=(base, cmrm_obj, results)) for _ in range(clients)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    wall = time.perf_counter() - t0
    tokens = sum(r["n"] for r in results)
    return {
        "overhead": statistics.median(r["overhead"] for r in results),
        "overhead_pct": statistics.median(r["overhead_pct"] for r in results),
        "ttft": statistics.median(r["ttft"] for r in results),
        "server_prompt_ms": statistics.median(r["server_prompt_ms"] for r in results),
        "tps": statistics.median(r["tps"] for r in results),
        "server_tps": statistics.median(r["server_tps"] for r in results),
        "total_tps": tokens / wall,
    }


def chat(extra):
    rows = []
    for _ in range(repeats):
        out = subprocess.run(
            [cmrm, "chat", "-m", model, "--mmproj", mmproj, "-t", threads, "--image", image, "-p", PROMPT,
             "-n", str(N_TOKENS), "--temp", "0", "--ignore-eos", "-v", "-c", "2048"] + extra,
            capture_output=True, text=True, check=True).stderr
        m = re.search(r"^prompt: .* in ([0-9.]+) ms \| generation: \d+ tokens in [0-9.]+ ms \(([0-9.]+) tok/s\)", out, re.M)
        rows.append((float(m.group(1)), float(m.group(2))))
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)


modes = [
    ("off", [], {"enabled": False}, ["--no-cmrm"]),
    ("dataset", ["--cmrm", vectors], {"enabled": True}, ["--cmrm", vectors]),
    ("sample-level", ["--cmrm", vectors], {"enabled": True, "sample": True}, ["--cmrm", vectors, "--cmrm-sample"]),
]
print(f"model {model.split('/')[-1]}, {threads} threads, image + {N_TOKENS} tokens, greedy; medians over {repeats} rounds")
print()
print("| CMRM | clients = slots | time to first token (client) | prompt (server) | tok/s per request (client / server) | total tok/s | HTTP and queue (per request) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, server_flags, obj, chat_flags in modes:
    prompt_ms, tps = chat(chat_flags)
    print(f"| {name} | `cmrm chat` | - | {prompt_ms:.0f} ms | {tps:.1f} | - | - |")
    for clients in (1, 2, 4):
        p, base = start_server(clients, server_flags)
        try:
            run(base, 1, obj)  # warm-up
            r = run(base, clients, obj)
        finally:
            p.terminate()
            p.wait()
        print(f"| {name} | {clients} | {r['ttft']:.0f} ms | {r['server_prompt_ms']:.0f} ms | {r['tps']:.1f} / {r['server_tps']:.1f} | {r['total_tps']:.1f} | {r['overhead']:.1f} ms ({r['overhead_pct']:.1f}%) |")
print()
print("| 4 clients, CMRM off | total tok/s |")
print("|---|---:|")
for slots in (1, 2, 4):
    p, base = start_server(slots, [])
    try:
        run(base, 1, {"enabled": False})
        r = run(base, 4, {"enabled": False})
    finally:
        p.terminate()
        p.wait()
    print(f"| {slots} slot(s) | {r['total_tps']:.1f} |")
