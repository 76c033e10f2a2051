"""What every benchmark shares: the machine it ran on, child processes timed with their peak RSS,
repeats reduced to a median, and the one JSON line each script prints (the summary goes to stderr).

Machines here are noisy, so every result carries the load average at start and end: absolute times
drift, ratios measured within one run hold."""
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
MIN_FREE_RAM = 1.0 * 2**30  # below this a child is stopped (see run_child)


def machine_info():
    """nproc, CPU model, RAM, paddle version and load average: enough to judge a number later."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor()
    try:
        from importlib.metadata import version

        paddle_version = version("paddlepaddle")
    except Exception:
        paddle_version = "unknown"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": model,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "paddle": paddle_version,
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def child_env():
    """Environment for child processes: repo importable, paddle's log noise off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("GLOG_minloglevel", "2")
    return env


def _high_water_mark(pid, cmd):
    """VmHWM of a live process in bytes; 0 while it has not exec'd `cmd` yet, None once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read().split(b"\0")[:len(cmd)] != [os.fsencode(c) for c in cmd]:
                return 0  # still the fork of this process: its RSS is ours
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_child(cmd, cwd=None, env=None):
    """Run `cmd` to completion; return wall seconds, peak RSS in bytes and its stdout.

    The peak is the kernel's high-water mark of the child's RSS (VmHWM), polled every 20 ms: being a
    running maximum, a poll after the peak sees it. (ru_maxrss would not do: it keeps the RSS the
    child had as a fork of this process, before exec.)"""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd or ROOT, env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()
    starved = []

    def poll():
        while not done.is_set():
            value = _high_water_mark(proc.pid, cmd)
            if value is None:
                break
            peak[0] = max(peak[0], value)
            # A shared machine: stop the child before it makes the kernel kill someone else's work.
            if psutil.virtual_memory().available < MIN_FREE_RAM:
                starved.append(peak[0])
                proc.kill()
                break
            done.wait(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    # Drain the pipes on threads so a chatty child cannot block; wait4 reaps it with its rusage.
    out, err = [], []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read())) for s, b in
               ((proc.stdout, out), (proc.stderr, err))]
    for t in readers:
        t.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    done.set()
    poller.join()
    for t in readers:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if starved:
        raise RuntimeError(f"stopped {' '.join(cmd[:3])} ...: free RAM fell below {gb(MIN_FREE_RAM):.1f} GB "
                           f"(its peak RSS so far {gb(starved[0]):.1f} GB)")
    if proc.returncode != 0:
        tail = "".join(err).strip().splitlines()[-15:]
        raise RuntimeError(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))
    return {"wall_s": wall, "peak_rss_bytes": peak[0] or usage.ru_maxrss * 1024, "stdout": "".join(out)}


def last_json_line(text):
    """The last line of `text` that parses as a JSON object (children print one)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def median(values):
    return float(statistics.median(values))


def ratio(a, b):
    return float(a) / float(b) if b else float("inf")


def emit(result, summary_lines):
    """Print the JSON line on stdout (with the end load average) and the summary on stderr."""
    result.setdefault("machine", {})["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    for line in summary_lines:
        print(line, file=sys.stderr)
    print(json.dumps(result, sort_keys=True), flush=True)


def gb(n_bytes):
    return n_bytes / 2**30
