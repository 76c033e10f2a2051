#!/usr/bin/env bash
# Fine-tune Flan-T5-base on one GLUE task, text-to-text (FusionBench's prompts), full or LoRA (r 16).
#   bash projects/t5/finetune_flan_t5_base.sh RTE                  # full fine-tuning
#   bash projects/t5/finetune_flan_t5_base.sh RTE lora             # LoRA r=16, alpha=32, q and v
#   bash projects/t5/finetune_flan_t5_base.sh MNLI lora Engine.num_train_epochs=1 --device gpu:1
# Data: ./dataset/<GLUE folder>/ (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI; DATASET_DIR
# overrides ./dataset). Output: ./output/flan_t5_base/<TASK>[_lora-16]/ (a LoRA run also writes lora/;
# OUTPUT_DIR replaces ./output/flan_t5_base, e.g. for the t5-tiny config).
# Env: PYTHON (interpreter), CONFIG (another config file), DATASET_DIR, OUTPUT_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
VALID_TASKS="CoLA SST2 MRPC STSB QQP MNLI QNLI RTE WNLI"
usage() {
  echo "usage: $(basename "$0") TASK [full|lora] [A.B=value | -o A.B=value | train.py flag ...]" >&2
  echo "  TASK: one of $VALID_TASKS (SST-2, STS-B and any case accepted)" >&2
}
if [ $# -lt 1 ]; then
  echo "error: no task given" >&2; usage; exit 2
fi
RAW_TASK="$1"; shift
case "$(echo "$RAW_TASK" | tr '[:lower:]' '[:upper:]' | tr -d '_-')" in
  COLA) TASK=CoLA; DIR=CoLA ;;
  SST2) TASK=SST2; DIR=SST-2 ;;
  MRPC) TASK=MRPC; DIR=MRPC ;;
  STSB) TASK=STSB; DIR=STS-B ;;
  QQP) TASK=QQP; DIR=QQP ;;
  MNLI) TASK=MNLI; DIR=MNLI ;;
  QNLI) TASK=QNLI; DIR=QNLI ;;
  RTE) TASK=RTE; DIR=RTE ;;
  WNLI) TASK=WNLI; DIR=WNLI ;;
  *) echo "error: unknown task '$RAW_TASK': expected one of $VALID_TASKS" >&2; usage; exit 2 ;;
esac
MODE=full
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then  # not a flag, no '=': the mode
  case "$1" in
    full|lora) MODE="$1"; shift ;;
    *) echo "error: unknown mode '$1': expected full or lora" >&2; usage; exit 2 ;;
  esac
fi
DATA_ROOT="${DATASET_DIR:-./dataset}/$DIR/"
OUT="${OUTPUT_DIR:-./output/flan_t5_base}"
OUT="${OUT%/}/$TASK"
ARGS=(-o "Data.Train.dataset.name=$TASK" -o "Data.Train.dataset.root=$DATA_ROOT"
      -o "Data.Eval.dataset.name=$TASK" -o "Data.Eval.dataset.root=$DATA_ROOT")
if [ "$TASK" = MNLI ]; then ARGS+=(-o Data.Eval.dataset.split=dev_matched); fi
if [ "$MODE" = lora ]; then
  OUT="${OUT}_lora-16"
  ARGS+=(-o Model.lora.r=16 -o Model.lora.alpha=32 -o Model.lora.dropout=0.0 -o "Model.lora.target_modules=[q, v]"
         -o Model.lora.save_merged=true -o Optimizer.lr.learning_rate=5e-4)
fi
ARGS+=(-o "Engine.save_load.output_dir=$OUT")
while [ $# -gt 0 ]; do  # the user's extras, after ours so they win
  case "$1" in
    -o) [ $# -ge 2 ] || { echo "error: -o needs A.B=value" >&2; exit 2; }; ARGS+=(-o "$2"); shift 2 ;;
    -*) ARGS+=("$1"); shift ;;
    *=*) ARGS+=(-o "$1"); shift ;;
    *) echo "error: unexpected argument '$1': extra arguments are overrides A.B=value (or -o A.B=value)" >&2
       exit 2 ;;
  esac
done
CONFIG="${CONFIG:-$ROOT/configs/t5/finetune_flan_t5_base_glue.yaml}"
exec "$PYTHON" "$ROOT/tools/train.py" -c "$CONFIG" "${ARGS[@]}"
