#!/usr/bin/env bash
# Fine-tune gpt2-medium-en on one GLUE task on one card (same per-task settings as GPT-345M).
#   bash projects/gpt/finetune_gpt2_medium_single_card.sh SST2 Model.pretrained=./gpt2-medium-en
# Checkpoints: <config output_dir>/<TASK> (OUTPUT_DIR=parent overrides). Data: any GLUE layout under DATASET_DIR.
# Env: PYTHON (interpreter), CONFIG (another config file), DATASET_DIR (default ./dataset).
set -euo pipefail
CONFIG="${CONFIG:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/configs/gpt/finetune_gpt2_medium_glue.yaml}"
source "$(dirname "${BASH_SOURCE[0]}")/glue_task.sh"
exec "$PYTHON" "$ROOT/tools/train.py" -c "$CONFIG" "${TRAIN_ARGS[@]}"
