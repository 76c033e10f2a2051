#!/usr/bin/env bash
# Fine-tune GPT-345M on one GLUE task on one card (FleetX's recipe and per-task settings).
#   bash projects/gpt/finetune_gpt_345M_single_card.sh CoLA
#   bash projects/gpt/finetune_gpt_345M_single_card.sh MNLI dev_mismatched Model.pretrained=./ckpt/model
# Env: PYTHON (interpreter), CONFIG (another config file), DATASET_DIR (default ./dataset).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/glue_task.sh"
CONFIG="${CONFIG:-$ROOT/configs/gpt/finetune_gpt_345M_single_card_glue.yaml}"
exec "$PYTHON" "$ROOT/tools/train.py" -c "$CONFIG" "${TRAIN_ARGS[@]}"
