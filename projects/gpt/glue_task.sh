# Sourced by the finetune_*.sh scripts: turns `TASK [split] [overrides...]` into train.py arguments.
#
# Sets PYTHON (env PYTHON, else the repo's .venv/bin/python if present, else python), ROOT (the repo),
# and TRAIN_ARGS (an array of -o overrides: FleetX's per-task settings, then the user's extras).
# Extra arguments: `A.B=value` or `-o A.B=value` (both become -o overrides), or any train.py flag.
# Datasets live under ./dataset relative to the current directory (DATASET_DIR overrides it), in any of
# the layouts users have: the GLUE zips (dataset/CoLA, dataset/MNLI, ...), FleetX's original sources
# (dataset/cola_public, dataset/multinli_1.0, ...) or the Hugging Face parquet export
# (dataset/glue/cola/train-*.parquet, ...); the script finds the task's folder itself.
# Checkpoints go to <the config's Engine.save_load.output_dir>/<TASK> (OUTPUT_DIR overrides the
# parent), so fine-tuning several tasks one after another keeps every task's run.
# The sourcing script sets CONFIG (the training config) first.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi

VALID_TASKS="CoLA SST2 MRPC STSB QQP MNLI QNLI RTE WNLI"
usage() {
  echo "usage: $(basename "$0") TASK [split] [A.B=value | -o A.B=value ...]" >&2
  echo "  TASK: one of $VALID_TASKS (SST-2, STS-B and any case accepted)" >&2
  echo "  split: Data.Eval split, e.g. dev_matched | dev_mismatched for MNLI" >&2
}

if [ $# -lt 1 ]; then
  echo "error: no task given" >&2; usage; exit 2
fi
RAW_TASK="$1"; shift
# TASK, its GLUE-zip folder, FleetX's folder (when different) and the Hugging Face config name
case "$(echo "$RAW_TASK" | tr '[:lower:]' '[:upper:]' | tr -d '_-')" in
  COLA) TASK=CoLA; GLUE_DIR=CoLA; FLEETX_DIR=cola_public; HF=cola ;;
  SST2) TASK=SST2; GLUE_DIR=SST-2; FLEETX_DIR=SST-2; HF=sst2 ;;
  MRPC) TASK=MRPC; GLUE_DIR=MRPC; FLEETX_DIR=MRPC; HF=mrpc ;;
  STSB) TASK=STSB; GLUE_DIR=STS-B; FLEETX_DIR=STS-B; HF=stsb ;;
  QQP) TASK=QQP; GLUE_DIR=QQP; FLEETX_DIR=QQP; HF=qqp ;;
  MNLI) TASK=MNLI; GLUE_DIR=MNLI; FLEETX_DIR=multinli_1.0; HF=mnli ;;
  QNLI) TASK=QNLI; GLUE_DIR=QNLI; FLEETX_DIR=QNLI; HF=qnli ;;
  RTE) TASK=RTE; GLUE_DIR=RTE; FLEETX_DIR=RTE; HF=rte ;;
  WNLI) TASK=WNLI; GLUE_DIR=WNLI; FLEETX_DIR=WNLI; HF=wnli ;;
  *) echo "error: unknown task '$RAW_TASK': expected one of $VALID_TASKS" >&2; usage; exit 2 ;;
esac

SPLIT=""
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then  # not a flag, no '=': the split
  SPLIT="$1"; shift
fi

BASE="${DATASET_DIR:-./dataset}"
if [ -d "$BASE/$FLEETX_DIR" ] && [ "$FLEETX_DIR" != "$GLUE_DIR" ] && [ ! -d "$BASE/$GLUE_DIR" ]; then
  DATA_ROOT="$BASE/$FLEETX_DIR/"            # FleetX's original sources
elif [ -d "$BASE/$GLUE_DIR" ]; then
  DATA_ROOT="$BASE/$GLUE_DIR/"              # the GLUE zip
elif [ -d "$BASE/glue/$HF" ] || [ -d "$BASE/$HF" ]; then
  DATA_ROOT="$BASE/"                        # the Hugging Face parquet export (found by the readers)
else
  DATA_ROOT="$BASE/$FLEETX_DIR/"            # nothing there yet: FleetX's folder (the error names it)
fi
if [ -z "${OUTPUT_DIR:-}" ]; then  # the config's output_dir, one folder per task below it
  OUTPUT_DIR="$("$PYTHON" -c 'import sys; sys.path.insert(0, sys.argv[2])
from ppmerge.config import load_config
from ppmerge.errors import UserError
try:
    print(load_config(sys.argv[1])["Engine"]["save_load"]["output_dir"])
except UserError as exc:
    sys.exit(f"error: {exc}")' "$CONFIG" "$ROOT")" || exit 2
fi
TRAIN_ARGS=(-o "Data.Train.dataset.name=$TASK" -o "Data.Train.dataset.root=$DATA_ROOT"
            -o "Data.Eval.dataset.name=$TASK" -o "Data.Eval.dataset.root=$DATA_ROOT"
            -o "Engine.save_load.output_dir=${OUTPUT_DIR%/}/$TASK")
case "$TASK" in
  CoLA) TRAIN_ARGS+=(-o Model.metric.train.name=Mcc -o Model.metric.eval.name=Mcc) ;;
  MRPC) TRAIN_ARGS+=(-o Model.metric.train.name=AccuracyAndF1 -o Model.metric.eval.name=AccuracyAndF1
                     -o Engine.num_train_epochs=5) ;;
  QQP) TRAIN_ARGS+=(-o Model.metric.train.name=AccuracyAndF1 -o Model.metric.eval.name=AccuracyAndF1) ;;
  STSB) TRAIN_ARGS+=(-o Model.num_classes=1 -o Model.loss.train.name=MSELoss -o Model.loss.eval.name=MSELoss
                     -o Model.metric.train.name=PearsonAndSpearman -o Model.metric.eval.name=PearsonAndSpearman) ;;
  MNLI) TRAIN_ARGS+=(-o Model.num_classes=3) ;;
  WNLI) TRAIN_ARGS+=(-o Engine.num_train_epochs=5) ;;
esac
if [ "$TASK" = MNLI ]; then
  case "${SPLIT:-dev_matched}" in
    dev_matched|dev_mismatched) TRAIN_ARGS+=(-o "Data.Eval.dataset.split=${SPLIT:-dev_matched}") ;;
    *) echo "error: MNLI split '$SPLIT' is not valid: expected dev_matched or dev_mismatched" >&2; exit 2 ;;
  esac
elif [ -n "$SPLIT" ]; then
  TRAIN_ARGS+=(-o "Data.Eval.dataset.split=$SPLIT")
fi

while [ $# -gt 0 ]; do  # the user's extras, after the per-task settings so they win
  case "$1" in
    -o) TRAIN_ARGS+=(-o "$2"); shift 2 ;;
    -*) TRAIN_ARGS+=("$1"); shift ;;
    *=*) TRAIN_ARGS+=(-o "$1"); shift ;;
    *) echo "error: unexpected argument '$1': extra arguments are overrides A.B=value (or -o A.B=value)" >&2
       exit 2 ;;
  esac
done
