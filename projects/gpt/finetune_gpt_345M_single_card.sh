#!/usr/bin/env bash
# Fine-tune GPT-345M on one GLUE task on one card (FleetX's recipe and per-task settings).
#   bash projects/gpt/finetune_gpt_345M_single_card.sh CoLA
#   bash projects/gpt/finetune_gpt_345M_single_card.sh MNLI dev_mismatched Model.pretrained=./ckpt/model
# Checkpoints: <config output_dir>/<TASK> (OUTPUT_DIR=parent overrides). Data: any GLUE layout under DATASET_DIR.
# Env: PYTHON (interpreter), CONFIG (another config file), DATASET_DIR (default ./dataset).
set -euo pipefail
CONFIG="${CONFIG:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/configs/gpt/finetune_gpt_345M_single_card_glue.yaml}"
source "$(dirname "${BASH_SOURCE[0]}")/glue_task.sh"
exec "$PYTHON" "$ROOT/tools/train.py" -c "$CONFIG" "${TRAIN_ARGS[@]}"
