#!/usr/bin/env bash
# Data-parallel fine-tuning of GPT-345M on one GLUE task with paddle.distributed.launch.
#   bash projects/gpt/finetune_gpt_345M_multi_card.sh SST2
#   DEVICES=0,1,2,3 bash projects/gpt/finetune_gpt_345M_multi_card.sh MNLI dev_mismatched
# GPUs: DEVICES (default: every GPU nvidia-smi lists) go to `--devices`. Without GPUs the run uses
# NPROC CPU processes (default 2, gloo; `--devices` does not work on CPU) and Global.device=cpu.
# Each card/process reads its own shard; the effective batch is batch_size x processes.
# Checkpoints: <config output_dir>/<TASK> (OUTPUT_DIR=parent overrides). Data: any GLUE layout under DATASET_DIR.
# Env: PYTHON, CONFIG, DATASET_DIR, DEVICES, NPROC, LOG_DIR (default ./output/log).
set -euo pipefail
CONFIG="${CONFIG:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/configs/gpt/finetune_gpt_345M_single_card_glue.yaml}"
source "$(dirname "${BASH_SOURCE[0]}")/glue_task.sh"
if [ -z "${DEVICES:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
  COUNT="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  if [ "${COUNT:-0}" -gt 0 ]; then DEVICES="$(seq -s, 0 $((COUNT - 1)))"; fi
fi
if [ -n "${DEVICES:-}" ]; then
  LAUNCH=(--devices "$DEVICES")
else
  LAUNCH=(--nproc_per_node "${NPROC:-2}")
  TRAIN_ARGS=(-o Global.device=cpu "${TRAIN_ARGS[@]}")
fi
exec "$PYTHON" -m paddle.distributed.launch --log_dir "${LOG_DIR:-./output/log}" "${LAUNCH[@]}" \
  "$ROOT/tools/train.py" -c "$CONFIG" "${TRAIN_ARGS[@]}"
