#!/usr/bin/env python3
"""bench_bake.py: immutable environments on Docker (issue 8): baked layers and drift.

Scenarios, each measured N times after a warm-up, sides interleaved:

  up-10 baked   `envrig up` of 10 machines, each with one `once` step that takes 2 s, in a
                new checkout whose layers exist (baked by the warm-up)        vs
  up-10 plain   `envrig up` of the same 10 machines with no provisioning at all
                (target: baked <= 1.2x plain)
  up-10 cold    (info) the same provisioned machines with `--fresh`: every step runs
  switch gap    an immutable machine serving HTTP on a host port; its step changes and
                `envrig up` builds generation N+1 beside N and switches: the longest time
                during which GET / on the port got no answer, probed every 5 ms
                (target: <= 1000 ms)
  drift         `envrig drift web` of a machine holding 10,000 files of its own (written by
                its step, so in its layer) of which 30 were changed, added or deleted by
                hand (target: <= 1000 ms)

Every project is destroyed after its run; the layers this run made are removed at the end.
Python 3 standard library only; reuses bench.py's helpers.

    python3 bench/bench_bake.py --runs 5 [--envrig PATH] [--json FILE] [--check]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import BenchError, run  # noqa: E402

IMAGE = bench.IMAGE
MACHINES = 10
STEP_SECONDS = 2
TARGET_BAKED = 1.2  # baked up <= 1.2x plain up
TARGET_DRIFT_MS = 1000.0
TARGET_GAP_MS = 1000.0
FILES = 10_000

log = lambda msg: print(f"bench_bake: {msg}", file=sys.stderr, flush=True)  # noqa: E731


def envrig(exe: Path, d: Path, *args) -> list:
    return [str(exe), "-C", str(d), *args]


def timed(cmd) -> float:
    ms, _ = bench.timed(cmd)
    return ms


class Projects:
    """Checkouts in a temp folder; every one is destroyed at the end."""

    def __init__(self, exe: Path, tag: str):
        self.exe = exe
        self.tag = tag
        self.root = Path(tempfile.mkdtemp(prefix="envrig-bench-bake-")).resolve()
        self.dirs: list[Path] = []

    def new(self, text: str) -> Path:
        d = self.root / f"p{len(self.dirs):03d}"
        d.mkdir()
        (d / "Envfile").write_text(text)
        self.dirs.append(d)
        return d

    def destroy(self, d: Path):
        run(envrig(self.exe, d, "destroy", "-f"), check=False)

    def close(self):
        for d in self.dirs:
            self.destroy(d)


def envfile(tag: str, provision: bool) -> str:
    lines = ["[project]", 'name = "bakebench"', "[boxes.bb]", f'docker = "{IMAGE}"',
             "[defaults]", 'box = "bb"']
    for i in range(1, MACHINES + 1):
        lines.append(f"[machines.m{i}]")
        if provision:
            # The tag makes this run's fingerprints (and layers) its own.
            lines += [f"[[machines.m{i}.provision]]",
                      f'shell = "sleep {STEP_SECONDS}; echo {tag} > /provisioned"']
    return "\n".join(lines) + "\n"


def drift_envfile(tag: str) -> str:
    # 10,000 files of the machine's own, in 100 folders, written by its step.
    step = (f"mkdir -p /data && cd /data && for d in $(seq 1 100); do mkdir -p $d; "
            f"for f in $(seq 1 100); do echo {tag} > $d/$f; done; done")
    return "\n".join([
        "[project]", 'name = "driftbench"', "[boxes.bb]", f'docker = "{IMAGE}"',
        "[machines.web]", 'box = "bb"', "[[machines.web.provision]]", f"shell = {json.dumps(step)}",
    ]) + "\n"


def web_envfile(tag: str, port: int, version: int) -> str:
    return "\n".join([
        "[project]", 'name = "gapbench"', "immutable = true", "[boxes.bb]", f'docker = "{IMAGE}"',
        "[machines.web]", 'box = "bb"',
        'command = ["sh", "-c", "mkdir -p /www; exec httpd -f -p 80 -h /www"]',
        f'ports = ["127.0.0.1:{port}:80"]',
        "[machines.web.ready]", f'command = "wget -qO- http://127.0.0.1/ | grep -q v{version}"',
        "[[machines.web.provision]]", 'name = "page"',
        f'shell = "mkdir -p /www && echo v{version}-{tag} > /www/index.html"',
    ]) + "\n"


def probe_gap(port: int, stop: threading.Event, out: dict):
    """GET / every 5 ms until stopped (connect timeout 50 ms, read timeout 200 ms); records
    the longest time between two answers (ms) and the versions seen."""
    last_ok = time.perf_counter()
    worst = 0.0
    seen = []
    while not stop.is_set():
        t = time.perf_counter()
        try:
            # Short timeouts: a connection attempt that hangs (a SYN dropped while the
            # engine rewires the port) must not hide the moment the port answers again.
            with socket.create_connection(("127.0.0.1", port), timeout=0.05) as s:
                s.settimeout(0.2)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            body = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
            if body.startswith("v"):
                now = time.perf_counter()
                worst = max(worst, (now - last_ok) * 1000.0)
                last_ok = now
                if not seen or seen[-1] != body:
                    seen.append(body)
        except OSError:
            pass
        time.sleep(max(0.0, 0.005 - (time.perf_counter() - t)))
    out["gap"] = worst
    out["seen"] = seen


def raw_switch_gap(tag: str, i: int) -> float:
    """The gap of the same switch done by hand: A serves on a port, B (created with the same
    port) replaces it with `docker stop A; docker start B`."""
    port = free_port()
    names = [f"envrig-bench-gap-{tag}-{i}-{x}" for x in "ab"]
    sh = "mkdir -p /www; echo {} > /www/index.html; exec httpd -f -p 80 -h /www"
    try:
        run(["docker", "run", "-d", "--init", "--label", bench.RAW_LABEL, "--name", names[0],
             "-p", f"127.0.0.1:{port}:80", IMAGE, "sh", "-c", sh.format("va")])
        run(["docker", "create", "--init", "--label", bench.RAW_LABEL, "--name", names[1],
             "-p", f"127.0.0.1:{port}:80", IMAGE, "sh", "-c", sh.format("vb")])
        stop, out = threading.Event(), {}
        th = threading.Thread(target=probe_gap, args=(port, stop, out))
        th.start()
        time.sleep(0.3)
        try:
            run(["docker", "stop", names[0]])
            run(["docker", "start", names[1]])
        finally:
            time.sleep(1.5)
            stop.set()
            th.join()
        if not out["seen"] or out["seen"][-1] != "vb":
            raise BenchError(f"raw switch: the port does not serve B: saw {out['seen']}")
        return out["gap"]
    finally:
        run(["docker", "rm", "-f", *names], check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layers(tag_fps: set[str]) -> list[str]:
    p = run(["docker", "images", "--format", "{{.Repository}}", "--filter",
             "label=dev.envrig.baked"], check=False)
    return [r for r in p.stdout.split() if any(r.endswith(fp) for fp in tag_fps)]


def fingerprints(exe: Path, d: Path) -> set[str]:
    st = json.loads(run(envrig(exe, d, "status", "--json")).stdout)
    return {m["fingerprint"] for m in st["machines"] if m.get("fingerprint")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--envrig", type=Path, default=bench.ENVRIG)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args(argv)
    if not 5 <= a.runs <= 50:
        ap.error("--runs must be 5..50")
    if a.envrig == bench.ENVRIG:
        bench.prepare(log)
    exe = a.envrig.resolve()
    tag = uuid.uuid4().hex[:12]
    ps = Projects(exe, tag)
    samples: dict[str, list[float]] = {"baked": [], "plain": [], "cold": [], "gap": [],
                                       "rawgap": [], "drift": []}
    fps: set[str] = set()
    try:
        provisioned = envfile(tag, True)
        plain = envfile(tag, False)
        # Bakes the layers (one cold up), then warm-ups.
        log(f"baking {MACHINES} layers (one cold up, steps of {STEP_SECONDS} s)")
        d = ps.new(provisioned)
        ms = timed(envrig(exe, d, "up"))
        fps |= fingerprints(exe, d)
        log(f"cold up with baking: {ms:.0f} ms")
        ps.destroy(d)
        for i in range(a.warmup + a.runs):
            rec = i >= a.warmup
            for side in ("baked", "plain", "cold"):
                d = ps.new(plain if side == "plain" else provisioned)
                args = ["up", "--fresh"] if side == "cold" else ["up"]
                ms, p = bench.timed(envrig(exe, d, *args))
                if side == "baked" and "using baked layer" not in p.stderr:
                    raise BenchError(f"the baked up did not use the layers:\n{p.stderr[-2000:]}")
                if side == "cold" and "using baked layer" in p.stderr:
                    raise BenchError("--fresh used a layer")
                if rec:
                    samples[side].append(ms)
                ps.destroy(d)
            log(f"round {i + 1}/{a.warmup + a.runs} done")

        log("switch gap: an immutable machine serving HTTP, one new generation per run")
        port = free_port()
        d = ps.new(web_envfile(tag, port, 0))
        run(envrig(exe, d, "up"))
        fps |= fingerprints(exe, d)
        for i in range(a.warmup + a.runs):
            v = i + 1
            (d / "Envfile").write_text(web_envfile(tag, port, v))
            stop, out = threading.Event(), {}
            th = threading.Thread(target=probe_gap, args=(port, stop, out))
            th.start()
            time.sleep(0.2)
            try:
                _, p = bench.timed(envrig(exe, d, "up"))
            finally:
                time.sleep(1.5)
                stop.set()
                th.join()
            if "switched to generation" not in p.stderr:
                raise BenchError(f"no switch:\n{p.stderr[-2000:]}")
            if not out["seen"] or not out["seen"][-1].startswith(f"v{v}-"):
                raise BenchError(f"the port does not serve v{v}: saw {out['seen']}")
            fps |= fingerprints(exe, d)
            if i >= a.warmup:
                samples["gap"].append(out["gap"])
        fps |= fingerprints(exe, d)
        ps.destroy(d)

        log("switch gap, raw: `docker stop A; docker start B` (B made beforehand, same port)")
        for i in range(a.warmup + a.runs):
            samples_raw = raw_switch_gap(tag, i)
            if i >= a.warmup:
                samples["rawgap"].append(samples_raw)

        log(f"drift: a machine with {FILES} files of its own")
        d = ps.new(drift_envfile(tag))
        run(envrig(exe, d, "up"), timeout=600)
        fps |= fingerprints(exe, d)
        n = int(run(envrig(exe, d, "exec", "web", "--", "sh", "-c",
                           "find /data -type f | wc -l")).stdout.strip())
        if n != FILES:
            raise BenchError(f"the machine holds {n} files, not {FILES}")
        run(envrig(exe, d, "exec", "web", "--", "sh", "-c",
                   "for f in $(seq 1 10); do echo changed-by-hand >> /data/1/$f; "
                   "rm /data/2/$f; echo new > /data/3/new$f; done"))
        for i in range(a.warmup + a.runs):
            ms, p = bench.timed(envrig(exe, d, "drift", "web", "--json"))
            got = json.loads(p.stdout)
            if len(got["changes"]) != 30:
                raise BenchError(f"drift found {len(got['changes'])} changes, not 30")
            if i >= a.warmup:
                samples["drift"].append(ms)
    finally:
        ps.close()
        left = layers(fps)
        if left:
            run(["docker", "rmi", "-f", *left], check=False)

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio = med["baked"] / med["plain"]
    rows = [
        ("up 10 from baked layers", med["baked"], med["plain"], f"{ratio:.2f}x",
         f"<= {TARGET_BAKED}x no-provision up", ratio <= TARGET_BAKED),
        ("up 10 --fresh (steps run)", med["cold"], med["plain"],
         f"{med['cold'] / med['plain']:.2f}x", "(info)", None),
        ("switch gap (port not answering)", med["gap"], med["rawgap"],
         f"{med['gap'] / med['rawgap']:.2f}x", f"<= {TARGET_GAP_MS:.0f} ms", med["gap"] <= TARGET_GAP_MS),
        (f"drift, {FILES} files, 30 changes", med["drift"], None, "-",
         f"<= {TARGET_DRIFT_MS:.0f} ms", med["drift"] <= TARGET_DRIFT_MS),
    ]
    print(f"\n{'scenario':34} {'envrig ms':>10} {'ref. ms':>9} {'ratio':>6}  {'target':30} result")
    print("(ref.: the plain up for ups; `docker stop A; docker start B` for the switch gap)")
    for name, e, r, rt, target, ok in rows:
        res = "-" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{name:34} {e:10.1f} {('-' if r is None else f'{r:.1f}'):>9} {rt:>6}  {target:30} {res}")
    print("\nsamples (ms, in run order):")
    for k, v in samples.items():
        print(f"  {k:6} " + " ".join(f"{x:.0f}" for x in v))
    if a.json:
        a.json.write_text(json.dumps({"samples": samples, "medians": med}, indent=2))
    missed = [r[0] for r in rows if r[5] is False]
    if missed:
        print(f"\n{len(missed)} target(s) missed: {', '.join(missed)}")
    return 1 if (a.check and missed) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(2)
