#!/usr/bin/env python3
"""bench.py: envrig's Docker overhead, measured against raw `docker` commands.

Runs every scenario N times (default 7), timing only the command under test, and prints
one table of medians with the targets, plus every sample. Python 3 standard library only.

    python3 bench/bench.py                 # 7 runs per scenario
    python3 bench/bench.py --runs 9 --json /tmp/bench.json
    python3 bench/bench.py --check         # exit 1 when a target is missed

See bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENVRIG = REPO / "target" / "release" / "envrig"
HOST_SETUP = REPO / "scripts" / "host-setup.sh"
IMAGE = "envrig-test/busybox:latest"
RAW_PARALLEL = 8  # envrig's default `up --parallel`
CMD_TIMEOUT = 180  # seconds; no single command may hang the benchmark
MIN_RUNS = 5
MAX_RUNS = 100

# One label value per benchmark invocation: raw containers carry `envrig.bench=<TOKEN>`,
# so cleanup never touches anybody else's containers.
TOKEN = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
RAW_LABEL = f"envrig.bench={TOKEN}"

# The child environment: nothing from the caller may redirect envrig elsewhere.
CHILD_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in ("ENVRIG_FILE", "ENVRIG_PROVIDER", "RUST_LOG")
}
CHILD_ENV["NO_COLOR"] = "1"


class BenchError(Exception):
    pass


# --- processes ------------------------------------------------------------------------------


def run(cmd, check=True, timeout=CMD_TIMEOUT, cwd=None):
    """Runs cmd (untimed helper); returns the CompletedProcess."""
    try:
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=CHILD_ENV
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout} s: {' '.join(map(str, cmd))}")
    if check and p.returncode != 0:
        raise BenchError(
            f"failed (exit {p.returncode}): {' '.join(map(str, cmd))}\n"
            f"{p.stdout[-2000:]}{p.stderr[-2000:]}"
        )
    return p


def timed(cmd, cwd=None):
    """Runs cmd and returns (milliseconds, CompletedProcess); only the child is timed."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=CMD_TIMEOUT,
            cwd=cwd,
            env=CHILD_ENV,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {CMD_TIMEOUT} s: {' '.join(map(str, cmd))}")
    ms = (time.perf_counter() - t0) * 1000.0
    if p.returncode != 0:
        raise BenchError(
            f"failed (exit {p.returncode}): {' '.join(map(str, cmd))}\n"
            f"{p.stdout[-2000:]}{p.stderr[-2000:]}"
        )
    return ms, p


def docker_answers() -> bool:
    try:
        p = subprocess.run(
            ["docker", "version", "--format", "{{.Server.APIVersion}}"],
            capture_output=True,
            timeout=10,
            env=CHILD_ENV,
        )
        return p.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def image_present() -> bool:
    p = subprocess.run(
        ["docker", "image", "inspect", IMAGE], capture_output=True, timeout=30, env=CHILD_ENV
    )
    return p.returncode == 0


def prepare(log):
    """Docker up, test image present, release binary built."""
    if not docker_answers() or not image_present():
        log(f"docker does not answer (or {IMAGE} is missing): running {HOST_SETUP.relative_to(REPO)}")
        subprocess.run(["bash", str(HOST_SETUP)], check=True, timeout=1800)
        if not docker_answers():
            raise BenchError("docker still does not answer after host-setup.sh")
        if not image_present():
            raise BenchError(f"{IMAGE} is still missing after host-setup.sh")
    if not ENVRIG.exists():
        log("target/release/envrig is missing: cargo build --release -p envrig (takes minutes)")
        subprocess.run(
            ["cargo", "build", "--release", "-p", "envrig"], cwd=REPO, check=True, timeout=3600
        )
        if not ENVRIG.exists():
            raise BenchError(f"{ENVRIG} still missing after the build")


# --- the two sides --------------------------------------------------------------------------


class Workspace:
    """Temp folders for envrig projects and the raw containers; cleans up after itself."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="envrig-bench-")).resolve()
        self.folders: list[Path] = []
        self.seq = 0

    # envrig side
    def new_project(self, machines: int) -> Path:
        self.seq += 1
        d = self.root / f"p{self.seq:03d}"
        d.mkdir()
        lines = [
            "[project]",
            'name = "bench"',
            "[boxes.bb]",
            f'docker = "{IMAGE}"',
            "[defaults]",
            'box = "bb"',
        ]
        lines += [f"[machines.m{i}]" for i in range(1, machines + 1)]
        (d / "Envfile").write_text("\n".join(lines) + "\n")
        self.folders.append(d)
        return d

    @staticmethod
    def envrig(d: Path, *args) -> list:
        return [str(ENVRIG), "-C", str(d), *args]

    @staticmethod
    def envrig_ids(d: Path) -> list[str]:
        """Containers envrig made for project folder d (by its folder label)."""
        p = run(
            ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=dev.envrig.folder={d}"],
            check=False,
        )
        return p.stdout.split()

    def envrig_running(self, d: Path) -> int:
        p = run(
            [
                "docker", "ps", "-q", "--filter", f"label=dev.envrig.folder={d}",
                "--filter", "status=running",
            ],
            check=False,
        )
        return len(p.stdout.split())

    def clean_project(self, d: Path):
        """envrig destroy -f, then removes whatever it might have left."""
        run(self.envrig(d, "destroy", "-f"), check=False)
        left = self.envrig_ids(d)
        if left:
            run(["docker", "rm", "-f", *left], check=False)

    # raw side
    @staticmethod
    def raw_run_cmd() -> list:
        return [
            "docker", "run", "-d", "--init", "--label", RAW_LABEL,
            "--entrypoint", "sleep", IMAGE, "infinity",
        ]

    @staticmethod
    def raw_ids() -> list[str]:
        p = run(["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={RAW_LABEL}"], check=False)
        return p.stdout.split()

    def clean_raw(self):
        ids = self.raw_ids()
        if ids:
            run(["docker", "rm", "-f", *ids], check=False)

    def close(self):
        """Best effort, bounded: every container this run made, then the temp folders."""
        for d in self.folders:
            if self.envrig_ids(d):
                self.clean_project(d)
        self.clean_raw()
        shutil.rmtree(self.root, ignore_errors=True)
        left = self.raw_ids() + [i for d in self.folders for i in self.envrig_ids(d)]
        return left


def raw_up(n: int, pool: ThreadPoolExecutor) -> tuple[float, list[str]]:
    """Timed: n `docker run -d` commands, RAW_PARALLEL at a time (one, directly, for n=1)."""
    cmd = Workspace.raw_run_cmd()
    if n == 1:
        ms, p = timed(cmd)
        return ms, [p.stdout.strip()]
    t0 = time.perf_counter()
    futures = [pool.submit(subprocess.run, cmd, capture_output=True, text=True,
                           timeout=CMD_TIMEOUT, env=CHILD_ENV) for _ in range(n)]
    results = [f.result() for f in futures]
    ms = (time.perf_counter() - t0) * 1000.0
    bad = [r for r in results if r.returncode != 0]
    if bad:
        raise BenchError(f"raw docker run failed: {bad[0].stderr.strip()}")
    return ms, [r.stdout.strip() for r in results]


# --- scenarios ------------------------------------------------------------------------------
#
# Each function does one run of one side and returns the milliseconds of the command under
# test; setup and teardown happen outside the timing, and everything is removed at the end.


def envrig_up(ws: Workspace, n: int) -> float:
    d = ws.new_project(n)
    try:
        ms, _ = timed(ws.envrig(d, "up"))
        got = ws.envrig_running(d)
        if got != n:
            raise BenchError(f"envrig up: {got} of {n} machines running")
        return ms
    finally:
        ws.clean_project(d)


def raw_up_side(ws: Workspace, n: int, pool) -> float:
    try:
        ms, ids = raw_up(n, pool)
        running = run(["docker", "ps", "-q", "--filter", f"label={RAW_LABEL}",
                       "--filter", "status=running"]).stdout.split()
        if len(running) != n:
            raise BenchError(f"raw docker run: {len(running)} of {n} containers running")
        return ms
    finally:
        ws.clean_raw()


def envrig_after_up(ws: Workspace, n: int, *args) -> float:
    """Brings n machines up (untimed), then times `envrig ARGS`."""
    d = ws.new_project(n)
    try:
        run(ws.envrig(d, "up"))
        if ws.envrig_running(d) != n:
            raise BenchError("setup: envrig up did not start every machine")
        ms, _ = timed(ws.envrig(d, *args))
        return ms
    finally:
        ws.clean_project(d)


def envrig_destroy(ws: Workspace, n: int) -> float:
    d = ws.new_project(n)
    try:
        run(ws.envrig(d, "up"))
        if ws.envrig_running(d) != n:
            raise BenchError("setup: envrig up did not start every machine")
        ms, _ = timed(ws.envrig(d, "destroy", "-f"))
        left = ws.envrig_ids(d)
        if left:
            raise BenchError(f"envrig destroy -f left {len(left)} containers")
        return ms
    finally:
        ws.clean_project(d)


def raw_destroy(ws: Workspace, n: int, pool) -> float:
    try:
        _, ids = raw_up(n, pool)
        ms, _ = timed(["docker", "rm", "-f", *ids])
        if ws.raw_ids():
            raise BenchError("docker rm -f left containers")
        return ms
    finally:
        ws.clean_raw()


# name, label, envrig side, raw side (or None), target (kind, value)
def scenarios(ws, pool):
    return [
        ("up-1", "up, 1 machine",
         lambda: envrig_up(ws, 1), lambda: raw_up_side(ws, 1, pool), ("ratio", 1.15)),
        ("up-10", "up, 10 machines",
         lambda: envrig_up(ws, 10), lambda: raw_up_side(ws, 10, pool), ("ratio", 1.25)),
        ("status-10", "status, 10 running",
         lambda: envrig_after_up(ws, 10, "status"), None, ("ms", 25.0)),
        ("noop-up-10", "no-op up, 10 running",
         lambda: envrig_after_up(ws, 10, "up"), None, ("ms", 60.0)),
        ("destroy-1", "destroy -f, 1 machine",
         lambda: envrig_destroy(ws, 1), lambda: raw_destroy(ws, 1, pool), None),
        ("destroy-10", "destroy -f, 10 machines",
         lambda: envrig_destroy(ws, 10), lambda: raw_destroy(ws, 10, pool), None),
    ]


def measure(fn_envrig, fn_raw, runs: int, warmup: int):
    """Alternates the two sides (envrig first on even runs, raw first on odd ones) so slow
    drift of the host does not favour either; warm-up runs are not recorded."""
    e, r = [], []
    for i in range(warmup + runs):
        order = [(fn_envrig, e), (fn_raw, r)] if i % 2 == 0 else [(fn_raw, r), (fn_envrig, e)]
        for fn, out in order:
            if fn is None:
                continue
            ms = fn()
            if i >= warmup:
                out.append(ms)
    return e, r


# --- report ---------------------------------------------------------------------------------


def evaluate(name, label, e, r, target):
    em = statistics.median(e)
    rm = statistics.median(r) if r else None
    ratio = em / rm if rm else None
    verdict, tdesc = "-", "-"
    if target:
        kind, val = target
        if kind == "ratio":
            tdesc = f"<= {val:.2f}x raw"
            ok = ratio is not None and ratio <= val
        else:
            tdesc = f"<= {val:.0f} ms"
            ok = em <= val
        verdict = "PASS" if ok else "FAIL"
    return {
        "scenario": name,
        "label": label,
        "envrig_ms": e,
        "raw_ms": r or None,
        "envrig_median_ms": round(em, 1),
        "raw_median_ms": round(rm, 1) if rm is not None else None,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "target": {"kind": target[0], "value": target[1]} if target else None,
        "target_text": tdesc,
        "result": verdict if target else None,
    }


def print_table(results):
    hdr = ("scenario", "envrig ms", "raw ms", "ratio", "target", "result")
    rows = [
        (
            res["label"],
            f"{res['envrig_median_ms']:.1f}",
            "-" if res["raw_median_ms"] is None else f"{res['raw_median_ms']:.1f}",
            "-" if res["ratio"] is None else f"{res['ratio']:.2f}x",
            res["target_text"],
            res["result"] or "-",
        )
        for res in results
    ]
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    line = lambda cells: "  ".join(
        c.ljust(w[i]) if i in (0, 4, 5) else c.rjust(w[i]) for i, c in enumerate(cells)
    )
    print(line(hdr))
    print("  ".join("-" * x for x in w))
    for row in rows:
        print(line(row))


def print_samples(results):
    print("\nsamples (ms, in run order):")
    fmt = lambda xs: " ".join(f"{x:.0f}" if x >= 100 else f"{x:.1f}" for x in xs)
    for res in results:
        s = f"  {res['scenario']:<11} envrig: {fmt(res['envrig_ms'])}"
        if res["raw_ms"]:
            s += f"  | raw: {fmt(res['raw_ms'])}"
        print(s)


def host_info():
    def out(cmd):
        try:
            return run(cmd, check=False, timeout=30).stdout.strip()
        except BenchError:
            return ""

    return {
        "envrig_version": out([str(ENVRIG), "--version"]),
        "git_commit": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "docker_server": out(["docker", "version", "--format", "{{.Server.Version}}"]),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7,
                    help=f"recorded runs per scenario and side (>= {MIN_RUNS}; default 7)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="unrecorded runs before them (default 1)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--only", metavar="NAME", action="append",
                    help="run only this scenario (repeatable): up-1, up-10, status-10, "
                         "noop-up-10, destroy-1, destroy-10")
    args = ap.parse_args(argv)
    if not MIN_RUNS <= args.runs <= MAX_RUNS:
        ap.error(f"--runs must be between {MIN_RUNS} and {MAX_RUNS}")
    if not 0 <= args.warmup <= 10:
        ap.error("--warmup must be between 0 and 10")

    log = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)
    try:
        prepare(log)
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log(f"cannot prepare: {e}")
        return 2

    info = host_info()
    log(f"{info['envrig_version']} ({info['git_commit']}), docker {info['docker_server']}, "
        f"{info['cpus']} CPUs; {args.runs} runs (+{args.warmup} warm-up) per side")

    ws = Workspace()
    results = []
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=RAW_PARALLEL) as pool:
            todo = scenarios(ws, pool)
            if args.only:
                unknown = set(args.only) - {s[0] for s in todo}
                if unknown:
                    log(f"unknown scenario(s): {', '.join(sorted(unknown))}")
                    return 2
                todo = [s for s in todo if s[0] in args.only]
            for name, label, fe, fr, target in todo:
                t0 = time.monotonic()
                e, r = measure(fe, fr, args.runs, args.warmup)
                results.append(evaluate(name, label, e, r, target))
                log(f"{name}: done in {time.monotonic() - t0:.0f} s")
    except BenchError as e:
        log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        left = ws.close()
        if left:
            log(f"WARNING: {len(left)} containers could not be removed: {' '.join(left)}")

    print()
    print_table(results)
    print_samples(results)
    failed = [res["scenario"] for res in results if res["result"] == "FAIL"]
    print(f"\n{len(failed)} target(s) missed" + (f": {', '.join(failed)}" if failed else "")
          + f"; total {time.monotonic() - started:.0f} s")

    if args.json:
        doc = {
            "runs": args.runs,
            "warmup": args.warmup,
            "raw_parallel": RAW_PARALLEL,
            "image": IMAGE,
            "host": info,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "results": results,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")

    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
