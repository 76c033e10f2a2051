# Sourced by the finetune_*.sh scripts: turns `TASK [split] [overrides...]` into train.py arguments.
#
# Sets PYTHON (env PYTHON, else the repo's .venv/bin/python if present, else python), ROOT (the repo),
# and TRAIN_ARGS (an array of -o overrides: FleetX's per-task settings, then the user's extras).
# Extra arguments: `A.B=value` or `-o A.B=value` (both become -o overrides), or any train.py flag.
# Datasets live where FleetX puts them: ./dataset/<dir>/ relative to the current directory
# (DATASET_DIR overrides ./dataset).

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
case "$(echo "$RAW_TASK" | tr '[:lower:]' '[:upper:]' | tr -d '_-')" in
  COLA) TASK=CoLA; DIR=cola_public ;;
  SST2) TASK=SST2; DIR=SST-2 ;;
  MRPC) TASK=MRPC; DIR=MRPC ;;
  STSB) TASK=STSB; DIR=STS-B ;;
  QQP) TASK=QQP; DIR=QQP ;;
  MNLI) TASK=MNLI; DIR=multinli_1.0 ;;
  QNLI) TASK=QNLI; DIR=QNLI ;;
  RTE) TASK=RTE; DIR=RTE ;;
  WNLI) TASK=WNLI; DIR=WNLI ;;
  *) echo "error: unknown task '$RAW_TASK': expected one of $VALID_TASKS" >&2; usage; exit 2 ;;
esac

SPLIT=""
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*=}" = "$1" ]; then  # not a flag, no '=': the split
  SPLIT="$1"; shift
fi

DATA_ROOT="${DATASET_DIR:-./dataset}/$DIR/"
TRAIN_ARGS=(-o "Data.Train.dataset.name=$TASK" -o "Data.Train.dataset.root=$DATA_ROOT"
            -o "Data.Eval.dataset.name=$TASK" -o "Data.Eval.dataset.root=$DATA_ROOT")
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
