#!/usr/bin/env bash
# What llama.cpp's RPC backend costs cmrm: prompt time (time to first token) and generation
# tokens/s with the fixture's layers on this process's CPU, on one loopback `cmrm rpc-server`,
# and split across two; unsteered, dataset CMRM through the control vector and through the graph
# callback (one layer and every layer: each hooked node reads and writes a tensor that lives on
# the server), in one run on one machine. Loopback has no network latency: on a real network
# each callback layer adds a round trip per micro-batch.
#   scripts/bench-rpc.sh [REPS]        result in target/bench-rpc/result.md
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3}
out=target/bench-rpc
mkdir -p "$out"
bash scripts/fixture.sh >/dev/null
cargo build --release 2>/dev/null
bin=target/release/cmrm
fix=${CMRM_FIXTURE_DIR:-fixture}
model=$fix/SmolLM2-135M-Instruct.Q4_1.gguf
mmproj=$fix/mmproj-smollm2-synthetic.gguf
threads=$(nproc)
vec=$out/vectors.gguf
[ -f "$vec" ] || "$bin" calibrate -m "$model" --mmproj "$mmproj" \
  --anchors vendor/sets/harmful-anchors.jsonl --limit 8 --corruption blank -o "$vec" 2>/dev/null
n_layer=$("$bin" inspect "$vec" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["model"]["n_layer"])' 2>/dev/null || echo 30)
last=$((n_layer - 1))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pa=$(free_port); pb=$(free_port)
"$bin" rpc-server --port "$pa" -t "$threads" >/dev/null 2>&1 & ra=$!
"$bin" rpc-server --port "$pb" -t "$threads" >/dev/null 2>&1 & rb=$!
trap 'kill $ra $rb 2>/dev/null || true' EXIT
for p in $pa $pb; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

run() {
  "$bin" chat -m "$model" --mmproj "$mmproj" -t "$threads" --image vendor/images/astronaut.jpg \
    -p "Describe this picture in detail." -n 64 --temp 0 --ignore-eos -v "$@" 2>&1 >/dev/null | awk '
    /^prompt:/ {for (i=1;i<=NF;i++) {if ($i=="in" && $(i+2)=="ms" && !p) p=$(i+1); if ($i ~ /^tok\/s/) s=substr($(i-1),2)}}
    END {print p, s}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
modes=(
  "no CMRM:--no-cmrm"
  "control vector, 1 layer:--cmrm $vec --cmrm-positions last"
  "graph callback, 1 layer:--cmrm $vec --cmrm-positions last --cmrm-path callback"
  "control vector, layers 1-$last:--cmrm $vec --cmrm-layers 1-$last --cmrm-positions last"
  "graph callback, layers 1-$last:--cmrm $vec --cmrm-layers 1-$last --cmrm-positions last --cmrm-path callback"
)
places=("local:" "1 RPC server:--rpc 127.0.0.1:$pa" "2 RPC servers:--rpc 127.0.0.1:$pa,127.0.0.1:$pb")
{
  echo "## RPC on loopback ($(date -u +%F), $(nproc) cores, $(uname -m); scripts/bench-rpc.sh $reps)"
  echo
  echo "SmolLM2-135M Q4_1 + synthetic tower (196 image tokens), 'Describe this picture in detail.' +"
  echo "64 generated tokens, greedy, median of $reps; every layer on the RPC server(s) when used;"
  echo "steered: the last prompt token and every generated token (\`--cmrm-positions last\`, the"
  echo "callback's worst case), layer 20 (the default) or layers 1-$last."
  echo
  echo "| placement | steering | prompt ms (TTFT) | generation tok/s |"
  echo "|---|---|---:|---:|"
  for place in "${places[@]}"; do
    pname=${place%%:*}; pflags=${place#*:}
    for mode in "${modes[@]}"; do
      name=${mode%%:*}; flags=${mode#*:}
      ps=(); gs=()
      for _ in $(seq "$reps"); do
        # shellcheck disable=SC2086
        read -r p g < <(run $flags $pflags)
        ps+=("$p"); gs+=("$g")
      done
      echo "| $pname | $name | $(printf '%s\n' "${ps[@]}" | median) | $(printf '%s\n' "${gs[@]}" | median) |"
    done
  done
} | tee "$out/result.md"
