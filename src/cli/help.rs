//! The long help of each command (`cmrm COMMAND --help`): what it reads, what it writes, how
//! its defaults are chosen, and examples, so that the help reads as a reference on its own
//! (`-h` keeps the one-line summaries).

pub const CHAT: &str = "\
Chat with a GGUF vision-language model about images, as llama-mtmd-cli does: the same flags and
defaults, the same answers without CMRM. With -p the turn is answered and the command exits;
without it the chat is interactive (/image FILE adds an image, /clear forgets the conversation,
/quit or Ctrl-D ends).

CMRM: image turns are steered by the vector file found next to the model (--cmrm FILE, else
<model-stem>.cmrm.gguf, else the one *.cmrm.gguf in the model's folder made for this model or
another quantization of it) with the settings the file recommends; --cmrm-* flags override
them, --cmrm-sample measures each input's own shift instead (no file needed), --no-cmrm turns
steering off. -v prints which file, which settings and why.";

pub const CHAT_EXAMPLES: &str = "\
Examples:
  cmrm chat -m model.gguf --mmproj mmproj.gguf --image photo.jpg -p \"What is in this picture?\"
  cmrm chat -m model.gguf --mmproj mmproj.gguf --image photo.jpg -p \"...\" --no-cmrm
  cmrm chat -m model.gguf --mmproj mmproj.gguf --cmrm-sample --cmrm-corruption blank
  cmrm chat -m model.gguf --mmproj mmproj.gguf -v        # interactive; says how it steers";

pub const CALIBRATE: &str = "\
Compute CMRM's per-layer shifts over an anchor set and write them as a vector file: for each
anchor request, the last prompt token's hidden state at every layer with the text alone minus
with a meaningless image (--corruption: noise, blank, or an image file), averaged (--method
mean), or their first principal direction (pca); --method shiftdc --benign FILE also stores
ShiftDC's safety directions (harmful minus benign text-only states), which `--cmrm-apply
project` and `pure` use.

Input: JSONL, one {\"prompt\": ...} per line (other fields ignored). Output (-o, default
<model-stem>.cmrm.gguf beside the model, so chat and serve find it): a GGUF in llama.cpp's
control-vector layout that llama-cli and llama-server load with --control-vector, with the
recommended settings (--alpha, --layers, --positions, --apply) and the model's identity, which
lets the file travel to other quantizations of the same model. Long runs show progress with an
ETA; --shard i/n splits a run across machines (`cmrm merge` joins the shards).";

pub const CALIBRATE_EXAMPLES: &str = "\
Examples:
  cmrm calibrate -m model.gguf --mmproj mmproj.gguf --anchors vendor/sets/harmful-anchors.jsonl
  cmrm calibrate -m model.gguf --mmproj mmproj.gguf --anchors a.jsonl --method shiftdc \\
      --benign vendor/sets/benign.jsonl --parallel 4
  cmrm calibrate ... --shard 1/2 -o part1.gguf     # and 2/2 elsewhere, then: cmrm merge -o v.gguf part*.gguf";

pub const MERGE: &str = "\
Join vector files calibrated with --shard i/n into one, equal to a single run over all anchors
(the per-anchor shifts are kept in each shard). Shards of another model or corruption are
refused.";

pub const INSPECT: &str = "\
Print a vector file's model identity, provenance (cmrm version, date, anchor set and its
SHA-256), recommended settings, and per layer the shift's norm and, for files with ShiftDC's
directions, the cosine between the shift and the refusal direction and the share of the shift
left without it (what --cmrm-apply pure adds). --json prints the same as JSON.";

pub const EVAL: &str = "\
Evaluate conditions on a data set: text (the image removed), image (no steering), cmrm
(dataset vectors), cmrm-sample (each input's own shift), interpolate and shiftdc. Each command
writes per-item JSONL to --out (appended: a rerun resumes where it stopped) and a summary as
Markdown and JSON (<name>-summary.md/.json); --parallel N answers N items at once on one batched
context, repeatably.";

pub const SAFETY: &str = "\
Unsafe rate on harmful requests with images, per condition: greedy answers judged by the
refusal-phrase judge (79% agreement with hand labels, kappa 0.59; the table says so) or by an
LLM judge (--judge llm --judge-model FILE, reported beside the refusal judge), with Wilson 95%
intervals and, against the image run, the items fixed and broken with McNemar's exact p.
Writes safety.jsonl and safety-summary.{md,json} to --out.";

pub const SAFETY_EXAMPLES: &str = "\
Examples:
  cmrm eval safety -m model.gguf --mmproj mmproj.gguf --data vendor/sets/harmful-eval.jsonl
  cmrm eval safety ... --data h.jsonl --conditions image,cmrm --alpha 0.5,1 --parallel 4";

pub const UTILITY: &str = "\
What steering costs on benign requests with images, per condition: over-refusal (answers with a
refusal phrase) with Wilson 95% intervals, overall and per item category; the perplexity of
reference answers (items with \"reference\"); multiple-choice accuracy (items with \"choices\" and
\"answer\"). Without --data it uses vendor/sets/benign-xs.jsonl from cmrm's source: 240 requests
with images, half of them harmful-looking but safe (XSTest's kind, in 8 categories). Writes
utility.jsonl and utility-summary.{md,json} to --out.";

pub const FIDELITY: &str = "\
How close each condition brings the model to its own text-only behaviour on the same requests:
the first answer token's KL divergence from the text-only run (and the share of the image's KL
each condition cuts), top-1 agreement, the length of the greedy answers' shared prefix, whether
they refuse alike, and per layer the cosine and L2 distance of the last prompt token's state.
Writes fidelity.jsonl and fidelity-summary.{md,json} to --out.";

pub const JUDGES: &str = "\
Measure the judges against hand labels (vendor/sets/judge-labels.jsonl by default): agreement
and Cohen's kappa of the refusal-phrase judge and of an LLM judge (--judge-model FILE).";

pub const ANALYZE: &str = "\
The representation gap: per layer, the cosine and L2 distance of the last prompt token's state
to the text-only state, with the image and under each CMRM condition, plotted
(gap-cosine.png, gap-l2.png) with a principal-component scatter of one layer
(gap-pca-layer<L>.png), and summarized in --out.";

pub const SWEEP: &str = "\
Choose a default: run text-only, the image, and each setting of the grid (--alpha LIST,
--layer-grid LIST, --positions-grid LIST, --methods cmrm,cmrm-sample,interpolate,shiftdc) on
harmful data (--data) and benign data (--benign; default vendor/sets/benign-xs.jsonl from
cmrm's source), and check each against the bar: unsafe rate at most the text-only rate +
--max-unsafe-above-text, reference perplexity at most --max-perplexity-increase above the image
run's, over-refusal at most --max-over-refusal above the image run's. The lowest unsafe rate
that reaches the bar is chosen, else the best trade-off is named with the part it fails.
--write-default stores the best dataset-level setting, with its table, as the vector file's
recommended settings. Writes the journals, sweep-summary.{md,json} and sweep.png to --out.";

pub const SWEEP_EXAMPLES: &str = "\
Examples:
  cmrm sweep -m model.gguf --mmproj mmproj.gguf --data h.jsonl --alpha 0.5,1,2 --layer-grid 12,16,20
  cmrm sweep ... --data h.jsonl --methods cmrm,cmrm-sample,shiftdc --positions-grid last,last-prompt \\
      --parallel 4 --write-default";

pub const REPORT: &str = "\
One self-contained HTML page (no network, plots inlined) from what eval, analyze and sweep wrote
to an output folder: their summaries, tables and plots, in order.";

pub const SERVE: &str = "\
An OpenAI-compatible chat server (POST /v1/chat/completions, as llama-server: streaming,
logprobs, response_format, tools through the model's own Jinja template, grammar, json_schema,
/tokenize, /detokenize, /apply-template, /props, /slots, /metrics with --metrics) with CMRM on
every image request, settable per request with a `cmrm` object ({\"enabled\", \"alpha\",
\"layers\", \"positions\", \"sample\", \"corruption\"}), and a chat page at /. The vector file
is found as for `cmrm chat`; the --cmrm-* flags set the server's defaults.

It binds 127.0.0.1:8080 unless told otherwise; --parallel N slots decode together (continuous
batching), --queue requests wait, a client that leaves gives its place back. Without --api-key,
JSON endpoints take only application/json from the same origin. Unknown request fields are a 400
that names them, as OpenAI answers. The limits (--max-tokens, --max-images, --max-image-bytes,
--max-image-pixels, --max-request-bytes, --timeout, --max-connections) bound what one client
can make it do.";

pub const SERVE_EXAMPLES: &str = "\
Examples:
  cmrm serve -m model.gguf --mmproj mmproj.gguf                 # http://127.0.0.1:8080/
  cmrm serve -m model.gguf --mmproj mmproj.gguf --parallel 4 --api-key-file keys.txt --metrics
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"cmrm\": {\"alpha\": 0.5}}'";

pub const CARD: &str = "\
Write the Markdown card a model repository shows beside a vector file (a Hugging Face
README): what the file is, how to use it with cmrm and with plain llama.cpp, its provenance and
recommended settings, and the measured numbers of an eval or sweep output folder
(--eval-summary DIR).";

pub const QUANTIZE: &str = "\
Quantize a model GGUF with llama.cpp's own quantizer, as llama-quantize (TYPE: Q4_K_M, Q4_1,
Q8_0, ...), with progress, written atomically. A vector file made for one quantization of a
model is accepted by the others (`cmrm inspect` shows the identity it checks).";

pub const RPC_SERVER: &str = "\
Lend this machine's CPU or GPUs to cmrm or llama.cpp on another machine, as llama.cpp's
rpc-server does (the same protocol): start it here, then pass --rpc HOST:PORT to chat, serve,
calibrate or eval there, or to llama-cli. The protocol has no authentication or encryption: it
binds 127.0.0.1 unless --host says otherwise, and warns when it does.";

pub const DEVICES: &str = "\
List the backends compiled into this build and the devices they offer, with their memory, and
those of RPC servers given with --rpc: the names --device takes (llama.cpp's --list-devices).";
