"""What only a GPU can check, in one script (≤ 5 minutes on a GPU machine); one JSON line on stdout.

    python bench/device_check.py [--gpu gpu:0] [--size small|tiny] [--n 7]

1. every data-free merge method on `gpu` equals its CPU result: max error in ulp of the entry's scale
   (the largest |value| among θ₀, the θ_i and the CPU result there); goal ≤ 2 ulp;
2. speed: task_arithmetic and ties_merging (global) in memory, CPU vs GPU, on GPT-2-shaped models;
3. one fine-tuning step of the tiny GPT classifier with fp16 O1, fp16 O2 and bf16 O1 (finite loss,
   finite gradients, parameters moved);
4. evaluation: the classifier's logits on the GPU equal the CPU's (fp32, max |Δ|).
On a machine without a GPU it says so on stderr, prints {"gpu": false, ...} and exits 0.
"""
import argparse
import json
import sys
import time

import numpy as np


def gpu_available():
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    try:
        return paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    except Exception:  # a CPU-only build
        return False


def random_pool(shapes, n, seed=0):
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(0, 0.02, size=s).astype(np.float32) for k, s in shapes.items()}
    models = [{k: v + rng.normal(0, 0.002, size=v.shape).astype(np.float32) for k, v in base.items()}
              for _ in range(n)]
    return base, models


def ulp_error(got, expected, base, models):
    worst = 0.0
    for key, ref in expected.items():
        scale = np.max(np.abs(np.stack([base[key], ref, *[m[key] for m in models]])), axis=0)
        error = np.abs(got[key].astype(np.float64) - ref.astype(np.float64)) / np.spacing(scale.astype(np.float32))
        worst = max(worst, float(np.max(error)))
    return worst


def check_methods(paddle, device, shapes):
    from ppmerge.merge import METHODS

    params = {"slerp": {}, "cabs": {"n": 1, "m": 4}}
    out = {}
    for name, method in sorted(METHODS.items()):
        if method.data_dependent:
            continue
        base, models = random_pool(shapes, 2 if name == "slerp" else 4)
        try:
            paddle.set_device("cpu")
            cpu = method(base, models, **params.get(name, {}))
            paddle.set_device(device)
            gpu = method(base, models, **params.get(name, {}))
            out[name] = {"max_ulp": ulp_error(gpu, cpu, base, models)}
        except Exception as error:  # report every method, do not stop at the first
            out[name] = {"error": f"{type(error).__name__}: {error}"[:300]}
        finally:
            paddle.set_device("cpu")
    return out


def check_speed(paddle, device, shapes, n):
    from ppmerge.merge import METHODS

    base, models = random_pool(shapes, n)
    out = {}
    for name, params in (("task_arithmetic", {}), ("ties_merging", {"topk_scope": "global"})):
        times = {}
        for where in ("cpu", device):
            paddle.set_device(where)
            start = time.perf_counter()
            METHODS[name](base, models, **params)
            times[where.split(":")[0]] = time.perf_counter() - start
        paddle.set_device("cpu")
        out[name] = {"cpu_s": times["cpu"], "gpu_s": times["gpu"], "speedup": times["cpu"] / times["gpu"]}
    return out


def check_training(paddle, device):
    from ppmerge.models import build_model

    out = {}
    paddle.set_device(device)
    for label, level, dtype in (("fp16_O1", "O1", "float16"), ("fp16_O2", "O2", "float16"),
                                ("bf16_O1", "O1", "bfloat16")):
        try:
            paddle.seed(0)
            model = build_model({"name": "gpt-tiny"}, num_classes=2)
            optimizer = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=model.parameters())
            if level == "O2":
                model, optimizer = paddle.amp.decorate(model, optimizer, level="O2", dtype=dtype)
            scaler = paddle.amp.GradScaler(init_loss_scaling=1024) if dtype == "float16" else None
            before = {k: v.astype("float32").numpy().copy() for k, v in model.state_dict().items()}
            ids = paddle.to_tensor(np.random.default_rng(0).integers(0, 50000, (4, 16)), dtype="int64")
            lengths = paddle.to_tensor([16, 12, 9, 5], dtype="int64")
            labels = paddle.to_tensor([0, 1, 1, 0], dtype="int64")
            with paddle.amp.auto_cast(level=level, dtype=dtype):
                loss = paddle.nn.functional.cross_entropy(model(ids, lengths).astype("float32"), labels)
            (scaler.scale(loss) if scaler else loss).backward()
            grads_finite = all(bool(paddle.isfinite(p.grad.astype("float32")).all()) for p in model.parameters()
                               if p.grad is not None)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            moved = any(not np.array_equal(before[k], v.astype("float32").numpy()) for k, v in model.state_dict().items())
            out[label] = {"loss": float(loss), "finite": bool(np.isfinite(float(loss)) and grads_finite), "moved": moved}
        except Exception as error:
            out[label] = {"error": f"{type(error).__name__}: {error}"[:300]}
    paddle.set_device("cpu")
    return out


def check_evaluation(paddle, device):
    from ppmerge.models import build_model

    paddle.seed(0)
    model = build_model({"name": "gpt-tiny"}, num_classes=3)
    model.eval()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    ids = np.random.default_rng(1).integers(0, 50000, (8, 24))
    lengths = np.array([24, 20, 17, 12, 9, 5, 3, 1])
    logits = {}
    for where in ("cpu", device):
        paddle.set_device(where)
        model = build_model({"name": "gpt-tiny"}, num_classes=3)
        model.set_state_dict(state)
        model.eval()
        with paddle.no_grad():
            logits[where] = model(paddle.to_tensor(ids, dtype="int64"), paddle.to_tensor(lengths, dtype="int64")).numpy()
    paddle.set_device("cpu")
    return {"max_abs_diff": float(np.max(np.abs(logits["cpu"] - logits[device])))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", default="gpu:0")
    parser.add_argument("--size", choices=("tiny", "small"), default="small", help="models of the speed check")
    parser.add_argument("--n", type=int, default=7)
    args = parser.parse_args(argv)
    if not gpu_available():
        print("device_check: no GPU on this machine (paddle sees none): nothing to check", file=sys.stderr)
        print(json.dumps({"bench": "device_check", "gpu": False}))
        return 0
    from ppmerge.runtime import import_paddle

    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from model_pool import SIZES, backbone_shapes

    paddle = import_paddle()
    small_shapes = {"emb": (257, 64), "w": (64, 192), "b": (192,), "ln": (64,)}
    result = {"bench": "device_check", "gpu": True, "device": args.gpu,
              "gpu_name": paddle.device.cuda.get_device_name(), "paddle": paddle.__version__}
    start = time.perf_counter()
    result["methods"] = check_methods(paddle, args.gpu, small_shapes)
    result["methods_within_2ulp"] = all(r.get("max_ulp", np.inf) <= 2 for r in result["methods"].values())
    result["speed"] = check_speed(paddle, args.gpu, backbone_shapes(**SIZES[args.size]), args.n)
    result["training"] = check_training(paddle, args.gpu)
    result["evaluation"] = check_evaluation(paddle, args.gpu)
    result["wall_s"] = time.perf_counter() - start
    for name, r in result["methods"].items():
        print(f"  {name:24s} {r.get('max_ulp', r.get('error'))}", file=sys.stderr)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
