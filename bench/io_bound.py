"""The I/O bound of a merge: load every input once and save one output, with the project's own
loaders and saver, and nothing else. Inputs are read two ways — whole files (`load_numpy_state_dict`)
and tensor by tensor (`open_state_dict`, what a streamed merge uses) — and the faster pass is the
bound, so a merge is never compared with a slower reader than the product has.
merge_bench.py runs it in a fresh process, as it runs tools/merge.py, so both pay the same
interpreter and paddle start-up.

    python bench/io_bound.py --output OUT.pdparams BASE.pdparams MODEL_1.pdparams ...

Prints one JSON line: import_s, load_s, save_s, total_s (load + save)."""
import argparse
import json
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="state dict files, each loaded once")
    parser.add_argument("--output", required=True, help="where the last loaded state dict is saved")
    args = parser.parse_args()

    start = time.perf_counter()
    from ppmerge.runtime import import_paddle

    import_paddle()
    from ppmerge.models.checkpoint import load_numpy_state_dict, open_state_dict, save_state_dict

    import_s = time.perf_counter() - start
    t0 = time.perf_counter()
    for path in args.inputs:  # tensor by tensor: every array read once, then dropped
        with open_state_dict(path) as lazy:
            for key in list(lazy.keys()):
                lazy[key]
    load_lazy_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = None
    for path in args.inputs:
        state = None  # drop the previous model first: a streaming merge holds one input at a time
        state = load_numpy_state_dict(path)
    load_eager_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_state_dict(state, args.output)
    save_s = time.perf_counter() - t0
    load_s = min(load_lazy_s, load_eager_s)
    print(json.dumps({"import_s": import_s, "load_s": load_s, "load_lazy_s": load_lazy_s,
                      "load_eager_s": load_eager_s, "save_s": save_s, "total_s": load_s + save_s}))


if __name__ == "__main__":
    main()
