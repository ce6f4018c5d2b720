"""Benchmarks of `cmrm serve` (called by scripts/bench-serve.sh and scripts/bench-batch.sh).

Default mode (bench-serve.sh): for each CMRM mode (off, dataset vectors, sample-level) and
concurrency (1, 2, 4 clients on a server with as many slots), it streams the same image question
from every client a few times and reports, per request, the time to first token seen by the client
and the generation speed, and the total throughput; then the same question through `cmrm chat -v`
for the baseline; and the throughput of 4 clients on 1 slot against 4 slots (N slots must not
deliver less than one).

    python3 bench-serve.py CMRM MODEL MMPROJ VECTORS IMAGE THREADS REPEATS

Batch mode (bench-batch.sh, continuous batching): for C = 1, 2, 4, 8 clients against
`--parallel C`, C text-only streaming requests at once (greedy, 48 tokens, ignore_eos), time to
first token p50/p95 and the total generation throughput (completion tokens of all clients / wall
time of the concurrent phase), against llama.cpp's own batched decoding of C sequences
(scripts/batched-reference.cpp) on the same machine in the same run; then C = 4 image requests
with CMRM mixed in one batch (half dataset-steered, half unsteered; half sample-level, half
dataset-level) against the unmixed batches.

    python3 bench-serve.py --batch CMRM MODEL MMPROJ VECTORS IMAGE THREADS REPEATS REFERENCE
"""
import base64
import ctypes
import json
import os
import platform
import queue
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

N_TOKENS = 64
PROMPT = "Describe this picture in detail."
# Set by main() / batch_main().
cmrm = model = mmproj = vectors = image = threads = URL = None
repeats = 0
# Bounds, so that a stuck server cannot hang a run.
START_TIMEOUT = 120
REQUEST_TIMEOUT = 300
REFERENCE_TIMEOUT = 300
# Where the server's pid goes while it runs (the shell script's trap kills it from there).
PIDFILE = os.environ.get("CMRM_BENCH_PIDFILE")


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent():
    # The server gets SIGTERM when this process dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG).
    if _prctl is not None:
        _prctl(1, int(signal.SIGTERM))


def start_server(slots, extra):
    p = subprocess.Popen(
        [cmrm, "serve", "-m", model, "--mmproj", mmproj, "-t", threads, "--host", "127.0.0.1",
         "--port", "0", "--parallel", str(slots), "--queue", "16", "-c", "2048"] + extra,
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, preexec_fn=_die_with_parent)
    if PIDFILE:
        with open(PIDFILE, "w") as f:
            f.write(f"{p.pid}\n")
    lines = queue.Queue()

    def drain():
        for line in p.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    seen = []
    while True:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            line = None
        if line is None:
            stop_server(p)
            raise SystemExit("the server did not start:\n" + "".join(seen[-20:]))
        seen.append(line)
        m = re.search(r"listening on (\S+)", line)
        if m:
            # The drain thread keeps reading stderr, so the server never blocks on it.
            return p, m.group(1)


def stop_server(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=40)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if PIDFILE:
        try:
            os.remove(PIDFILE)
        except OSError:
            pass


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


def main(argv):
    global cmrm, model, mmproj, vectors, image, threads, repeats, URL
    cmrm, model, mmproj, vectors, image, threads, repeats = argv[:7]
    repeats = int(repeats)
    with open(image, "rb") as f:
        URL = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
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
                stop_server(p)
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
            stop_server(p)
        print(f"| {slots} slot(s) | {r['total_tps']:.1f} |")


# ---- batch mode (scripts/bench-batch.sh) ----

B_TOKENS = 48
B_PROMPT = "Describe a sunny beach in a few sentences."
B_CLIENTS = (1, 2, 4, 8)
IGNORE_EOS = True  # dropped if the server refuses the field


def percentile(xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stream_request(base, cmrm_obj, with_image, barrier):
    """One streaming request; returns its client-side timings and what the server reported."""
    global IGNORE_EOS
    nonce = f"Request {next(COUNTER)}."
    user = B_PROMPT if not with_image else [
        {"type": "image_url", "image_url": {"url": URL}}, {"type": "text", "text": PROMPT}]
    req = {"messages": [{"role": "system", "content": nonce}, {"role": "user", "content": user}],
           "max_tokens": B_TOKENS, "temperature": 0, "stream": True,
           "stream_options": {"include_usage": True}}
    if IGNORE_EOS:
        req["ignore_eos"] = True
    if cmrm_obj is not None:
        req["cmrm"] = cmrm_obj
    body = json.dumps(req).encode()
    if barrier is not None:
        barrier.wait()
    t0 = time.perf_counter()
    first = None
    usage = applied = None
    pieces = 0
    try:
        r = urllib.request.Request(base + "/v1/chat/completions", body,
                                   {"Content-Type": "application/json"})
        with urllib.request.urlopen(r, timeout=REQUEST_TIMEOUT) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": json.dumps(chunk["error"])}
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    pieces += 1
                    if first is None:
                        first = time.perf_counter()
                if chunk.get("cmrm") is not None:
                    applied = chunk["cmrm"]
                if chunk.get("usage"):
                    usage = chunk["usage"]
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        if e.code == 400 and IGNORE_EOS and "ignore_eos" in text:
            IGNORE_EOS = False
            print("bench-batch: the server refuses ignore_eos; requests may end before "
                  f"{B_TOKENS} tokens", file=sys.stderr)
            return stream_request(base, cmrm_obj, with_image, None)
        return {"error": f"HTTP {e.code}: {text[:300]}"}
    except (OSError, ValueError) as e:
        return {"error": repr(e)}
    end = time.perf_counter()
    n = usage["completion_tokens"] if usage else pieces
    if first is None:
        first = end
    return {"start": t0, "end": end, "ttft": (first - t0) * 1e3, "n": n,
            "tps": (n - 1) / max(end - first, 1e-9), "applied": applied}


def batch_round(base, specs):
    """Sends one request per spec (cmrm object, with image) at the same moment; returns
    (results in spec order, wall seconds from the first send to the last token)."""
    barrier = threading.Barrier(len(specs))
    results = [None] * len(specs)

    def go(i, spec):
        results[i] = stream_request(base, spec[0], spec[1], barrier)

    ts = [threading.Thread(target=go, args=(i, s)) for i, s in enumerate(specs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for r in results:
        if "error" in r:
            raise SystemExit(f"bench-batch: a request failed: {r['error']}")
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return results, wall


def batch_rounds(base, specs, rounds):
    batch_round(base, specs)  # warm-up: the same batch once, not counted
    per_spec = [[] for _ in specs]
    walls = []
    for _ in range(rounds):
        results, wall = batch_round(base, specs)
        walls.append(wall)
        for i, r in enumerate(results):
            per_spec[i].append(r)
    every = [r for rs in per_spec for r in rs]
    return per_spec, sum(r["n"] for r in every) / sum(walls)


def summary(rs):
    return {"n": len(rs), "p50": percentile([r["ttft"] for r in rs], 50),
            "p95": percentile([r["ttft"] for r in rs], 95),
            "tps": statistics.median(r["tps"] for r in rs),
            "tokens": (min(r["n"] for r in rs), max(r["n"] for r in rs))}


def tokens_note(s):
    lo, hi = s["tokens"]
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def reference(ref, clients):
    """llama.cpp's batched decoding of `clients` sequences: medians over the rounds."""
    rows = []
    for _ in range(repeats):
        out = subprocess.run([ref, model, str(clients), str(B_TOKENS), threads],
                             capture_output=True, text=True, timeout=REFERENCE_TIMEOUT)
        if out.returncode != 0:
            raise SystemExit(f"bench-batch: {ref} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    gen = statistics.median(r["tok_per_s"] for r in rows)
    e2e = statistics.median(r["n_seq"] * r["n_gen"] / (r["prefill_s"] + r["gen_s"]) for r in rows)
    return gen, e2e


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    return nproc, cpu


def applied_ok(r, want):
    a = r.get("applied") or {}
    if want is None:
        return not a.get("applied", False)
    return a.get("applied", False) and a.get("source") == want


def batch_main(argv):
    global cmrm, model, mmproj, vectors, image, threads, repeats, URL
    cmrm, model, mmproj, vectors, image, threads, repeats, ref = argv[:8]
    repeats = int(repeats)
    with open(image, "rb") as f:
        URL = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
    nproc, cpu = machine()
    try:
        version = subprocess.run([cmrm, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.strip().split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        version = "?"
    print(f"# `cmrm serve` continuous batching: {os.path.basename(model)}")
    print()
    print(f"Machine: {nproc} CPUs (nproc), {cpu}, {platform.machine()}; {threads} threads for the "
          f"server and the reference; {version or 'cmrm'}; {time.strftime('%Y-%m-%d %H:%M')}.")
    print(f"Every request: greedy (temperature 0), max_tokens {B_TOKENS}, `\"ignore_eos\": true` "
          "(so every answer has 48 tokens: see tokens/request), streamed; a system message of its own (nothing reused from "
          f"the cache). {repeats} measured rounds after one warm-up round per row; in a round all "
          "clients send at once.")
    print()
    print(f"## Text-only, C clients on `--parallel C`, against llama.cpp's batched decoding of C sequences")
    print()
    print("TTFT: time to first token seen by the client. Total tok/s: completion tokens of all "
          "clients / wall time of the round (first send to last token). Reference: "
          "`batched-reference MODEL C 48` (scripts/batched-reference.cpp: one llama_decode per "
          "step carrying one token per sequence); its tok/s counts the generation steps only, "
          "its \"with prefill\" also the C prompt decodes.")
    print()
    print("| clients = slots | TTFT p50 | TTFT p95 | tok/s per request | total tok/s (cmrm) | reference tok/s | cmrm / reference | reference with prefill | tokens/request |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    sys.stdout.flush()
    for clients in B_CLIENTS:
        print(f"bench-batch: {clients} client(s)...", file=sys.stderr)
        p, base = start_server(clients, [])
        try:
            per_spec, total = batch_rounds(base, [(None, False)] * clients, repeats)
        finally:
            stop_server(p)
        s = summary([r for rs in per_spec for r in rs])
        gen, e2e = reference(ref, clients)
        print(f"| {clients} | {s['p50']:.0f} ms | {s['p95']:.0f} ms | {s['tps']:.1f} | {total:.1f} | "
              f"{gen:.1f} | {total / gen:.2f} | {e2e:.1f} | {tokens_note(s)} |")
        sys.stdout.flush()

    # CMRM in a batch: image requests (steering applies to images), 4 clients on 4 slots.
    off = ({"enabled": False}, True)
    dataset = ({"enabled": True}, True)
    sample = ({"enabled": True, "sample": True}, True)
    names = {id(off): ("unsteered", None), id(dataset): ("dataset", "dataset"),
             id(sample): ("sample-level", "sample")}
    batches = [
        ("4 unsteered", [off, off, off, off]),
        ("2 dataset + 2 unsteered", [dataset, off, dataset, off]),
        ("4 dataset", [dataset, dataset, dataset, dataset]),
        ("2 sample-level + 2 dataset", [sample, dataset, sample, dataset]),
    ]
    print()
    print("## CMRM mixed in a batch: 4 image requests on `--parallel 4 --cmrm VECTORS`")
    print()
    print("Every request carries the same image and question; per-request `cmrm`: unsteered "
          "`{\"enabled\": false}`, dataset `{\"enabled\": true}`, sample-level "
          "`{\"enabled\": true, \"sample\": true}` (its own shift: two extra prefills). "
          "Applied: requests whose answer's `cmrm` object reports what was asked.")
    print()
    print("| batch | requests | n | TTFT p50 | TTFT p95 | tok/s per request | total tok/s (batch) | applied | tokens/request |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    sys.stdout.flush()
    print("bench-batch: CMRM batches...", file=sys.stderr)
    p, base = start_server(4, ["--cmrm", vectors])
    try:
        for label, specs in batches:
            per_spec, total = batch_rounds(base, specs, repeats)
            groups = []
            for spec in specs:
                if id(spec) not in [id(g) for g in groups]:
                    groups.append(spec)
            for k, g in enumerate(groups):
                rs = [r for spec, rs in zip(specs, per_spec) if spec is g for r in rs]
                name, want = names[id(g)]
                s = summary(rs)
                ok = sum(applied_ok(r, want) for r in rs)
                print(f"| {label if k == 0 else ''} | {name} | {s['n']} | {s['p50']:.0f} ms | "
                      f"{s['p95']:.0f} ms | {s['tps']:.1f} | {f'{total:.1f}' if k == 0 else ''} | "
                      f"{ok}/{len(rs)} | {tokens_note(s)} |")
                sys.stdout.flush()
    finally:
        stop_server(p)
    if not IGNORE_EOS:
        print()
        print("Note: this server refused `ignore_eos`: answers may be shorter than "
              f"{B_TOKENS} tokens (tokens/request).")

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if sys.argv[1:2] == ["--batch"]:
        batch_main(sys.argv[2:])
    else:
        main(sys.argv[1:])
