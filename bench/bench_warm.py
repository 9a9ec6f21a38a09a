#!/usr/bin/env python3
"""bench_warm.py: `envrig up` of a VM started warm from its layer's memory, against a cold
`up` of the same box and steps (issue 17, item 2). See bench/README.md.

Scenarios, for the small test guest and for the real Debian box (systemd, OpenSSH):

  cold     `envrig up` of one machine with `bake = false`: boot, then its step.
  warm     `envrig up` of the same machine with `warm = true`, its warm layer baked
           beforehand (untimed): restore, re-identify, SSH ready. Target <= 3 s.
  warm4    (small guest) `envrig up` of 4 machines of that recipe at once, warm, on a
           private network (their own warm layer, baked beforehand). Target <= 2x `warm`.

Each timed `up` returns when SSH takes the environment's key; `destroy` between runs is not
timed. Medians of N runs (after a warm-up run each), sides interleaved.

    python3 bench/bench_warm.py --runs 5
    python3 bench/bench_warm.py --runs 5 --only small --envrig target/release/envrig

Python 3 standard library only; everything runs in a temporary ENVRIG_HOME and folders that
are destroyed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("ENVRIG_TEST_GUEST", "/var/cache/envrig-test/guests/small-latest"))
DEBIAN = Path(os.environ.get("ENVRIG_TEST_DEBIAN_BOX", "/var/cache/envrig-test/boxes/debian-latest"))
STEP = "echo baked > /root/baked; (while true; do sleep 1; done) >/dev/null 2>&1 </dev/null &"


def envfile(name: str, box: str, memory: str, machines: list[str], warm: bool) -> str:
    head = f'[project]\nname = "{name}"\n'
    head += "warm = true\n" if warm else "bake = false\n"
    text = head + f'[boxes.b]\nlibvirt = "{box}"\n[defaults]\nbox = "b"\nprovider = "libvirt"\nmemory = "{memory}"\n'
    text += f'[[defaults.provision]]\nshell = "{STEP}"\n'
    for m in machines:
        text += f"[machines.{m}]\n"
    return text


class Bench:
    def __init__(self, envrig: str, work: Path):
        self.envrig = envrig
        self.work = work
        self.home = work / "home"
        self.dirs: list[Path] = []

    def project(self, name: str, text: str) -> Path:
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "Envfile").write_text(text)
        self.dirs.append(d)
        return d

    def run(self, d: Path, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, ENVRIG_HOME=str(self.home), NO_COLOR="1")
        r = subprocess.run([self.envrig, *args], cwd=d, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise SystemExit(f"envrig {' '.join(args)} in {d} failed ({r.returncode}):\n{r.stderr}")
        return r

    def timed_up(self, d: Path, expect_warm: bool) -> float:
        t0 = time.monotonic()
        r = self.run(d, "up")
        dt = time.monotonic() - t0
        warm = "started warm" in r.stderr
        if warm != expect_warm or "booted cold" in r.stderr:
            raise SystemExit(f"expected {'a warm' if expect_warm else 'a cold'} start in {d}:\n{r.stderr}")
        self.run(d, "destroy", "-f")
        return dt

    def cleanup(self):
        for d in self.dirs:
            env = dict(os.environ, ENVRIG_HOME=str(self.home), NO_COLOR="1")
            subprocess.run([self.envrig, "destroy", "-f"], cwd=d, env=env, capture_output=True, timeout=300)


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def scenario(b: Bench, label: str, box: str, memory: str, runs: int, four: bool) -> dict:
    one = ["vm"]
    cold = b.project(f"{label}-cold", envfile(f"{label}-cold", box, memory, one, False))
    warm = b.project(f"{label}-warm", envfile(f"{label}-warm", box, memory, one, True))
    # Bake the warm layers (untimed): the first `up` of each shape provisions and bakes.
    b.run(warm, "up")
    b.run(warm, "destroy", "-f")
    sides = {"cold": (cold, False), "warm": (warm, True)}
    if four:
        w4 = b.project(f"{label}-warm4", envfile(f"{label}-warm4", box, memory, ["m1", "m2", "m3", "m4"], True))
        b.run(w4, "up")
        b.run(w4, "destroy", "-f")
        sides["warm4"] = (w4, True)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for k, (d, w) in sides.items():  # warm-up
        b.timed_up(d, w)
    for _ in range(runs):
        for k, (d, w) in sides.items():
            times[k].append(b.timed_up(d, w))
    out = {k: {"median_s": median(v), "runs": [round(x, 2) for x in v]} for k, v in times.items()}
    out["warm_vs_cold"] = round(out["warm"]["median_s"] / out["cold"]["median_s"], 3)
    if four:
        out["warm4_vs_warm"] = round(out["warm4"]["median_s"] / out["warm"]["median_s"], 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=["small", "debian"])
    ap.add_argument("--envrig", default=str(REPO / "target/debug/envrig"))
    ap.add_argument("--json")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="envrig-bench-warm-"))
    b = Bench(str(Path(a.envrig).resolve()), work)
    results = {}
    try:
        if a.only in (None, "small"):
            results["small"] = scenario(b, "small", str(GUEST.resolve()), "256MiB", a.runs, True)
            print(json.dumps({"small": results["small"]}), flush=True)
        if a.only in (None, "debian"):
            env = dict(os.environ, ENVRIG_HOME=str(b.home), NO_COLOR="1")
            subprocess.run([b.envrig, "box", "add", "bench-debian", str(DEBIAN / "debian.box")], cwd=work, env=env,
                           check=True, capture_output=True, timeout=600)
            results["debian"] = scenario(b, "debian", "bench-debian", "512MiB", a.runs, False)
            print(json.dumps({"debian": results["debian"]}), flush=True)
    finally:
        b.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    for k, r in results.items():
        line = f"{k}: cold {r['cold']['median_s']} s, warm {r['warm']['median_s']} s ({r['warm_vs_cold']}x)"
        if "warm4" in r:
            line += f", 4 warm {r['warm4']['median_s']} s ({r['warm4_vs_warm']}x one)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
