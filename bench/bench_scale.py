#!/usr/bin/env python3
"""bench_scale.py: envrig over several Docker engines against raw `docker` on each.

On the rig of scripts/engines.sh (Docker daemons in network namespaces, one Swarm), one
environment of M busybox machines spread over E engines (placement = "spread", one
attachable overlay network across them) is brought up, asked for its status, checked for a
name resolved across hosts, and destroyed; the same is done raw: each engine runs its share
with `docker run` (the same parallelism as envrig's, all engines at once), on an overlay
network of its own made through the manager, and removes it with `docker rm -f`. Medians
of R rounds. Python 3 standard library only.

    python3 bench/bench_scale.py                     # 100 machines, 4 engines, 3 rounds
    python3 bench/bench_scale.py --machines 12 --engines 3 --rounds 1 --short   # CI
    python3 bench/bench_scale.py --check             # exit 1 when a target is missed

Targets (issue 16): up <= 1.3x the slowest engine's raw time for its share; status of the
environment <= 60 ms; destroy <= 1.3x raw; a name resolved across hosts within 1 s of `up`
returning. `--short` checks only that everything works (a CI round on a busy machine
times nothing meaningful).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE = "envrig-test/busybox:latest"
TIMEOUT = 600
TOKEN = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("ENVRIG_")}
ENV["NO_COLOR"] = "1"


class BenchError(Exception):
    pass


def run(cmd, check=True, cwd=None, env=None, timeout=TIMEOUT):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd,
                           env=env or ENV, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout} s: {' '.join(map(str, cmd))}")
    if check and p.returncode != 0:
        raise BenchError(f"failed (exit {p.returncode}): {' '.join(map(str, cmd))}\n"
                         f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p


def rig(engines: int) -> list[tuple[str, str]]:
    """The rig's Docker endpoints, with at least `engines` of them (it keeps 2 libvirt
    hosts when it has them: the tests' shape is `up 3 2`)."""
    have = run(["bash", str(REPO / "scripts/engines.sh"), "ls"], check=False).stdout
    def docker_lines(text):
        return [l.split() for l in text.splitlines() if l.split()[1:2] and l.split()[1].startswith("tcp://")]

    docker = docker_lines(have)
    if len(docker) < engines:
        libvirt = sum(1 for l in have.splitlines() if "qemu" in l)
        out = run(["bash", str(REPO / "scripts/engines.sh"), "up", str(engines), str(libvirt)]).stdout
        docker = docker_lines(out)
    return [(n, u) for n, u in docker[:engines]]


def envfile(project: str, machines: int) -> str:
    text = (f'[project]\nname = "{project}"\nplacement = "spread"\nbake = false\n\n'
            f'[boxes.bb]\ndocker = "{IMAGE}"\n\n[defaults]\nbox = "bb"\nmemory = "32MiB"\n\n')
    for i in range(machines):
        text += f"[machines.m{i:03d}]\n"
    return text


def share(machines: int, engines: int) -> list[int]:
    return [machines // engines + (1 if e < machines % engines else 0) for e in range(engines)]


def raw_round(endpoints, machines: int, parallel: int) -> dict:
    """Raw docker: each engine runs its share at once with `parallel` workers; the slowest
    engine's time is what envrig is held to."""
    manager = endpoints[0][1]
    net = f"rawbench-{TOKEN}"
    run(["docker", "-H", manager, "network", "create", "-d", "overlay", "--attachable",
         "--label", f"envrig.bench={TOKEN}", net])
    shares = share(machines, len(endpoints))

    def up_one(e):
        (name, uri), n = endpoints[e], shares[e]
        t0 = time.perf_counter()

        def one(i):
            run(["docker", "-H", uri, "run", "-d", "--init", "--name", f"raw-{TOKEN}-{e}-{i}",
                 "--label", f"envrig.bench={TOKEN}", "--network", net,
                 "--network-alias", f"r{e}x{i}", "--memory", "32m", IMAGE, "sleep", "infinity"])

        with ThreadPoolExecutor(parallel) as ex:
            list(ex.map(one, range(n)))
        return time.perf_counter() - t0

    def down_one(e):
        (name, uri), n = endpoints[e], shares[e]
        t0 = time.perf_counter()
        ids = run(["docker", "-H", uri, "ps", "-aq", "--filter", f"label=envrig.bench={TOKEN}"]).stdout.split()

        def one(i):
            run(["docker", "-H", uri, "rm", "-f", i])

        with ThreadPoolExecutor(parallel) as ex:
            list(ex.map(one, ids))
        return time.perf_counter() - t0

    with ThreadPoolExecutor(len(endpoints)) as ex:
        ups = list(ex.map(up_one, range(len(endpoints))))
    with ThreadPoolExecutor(len(endpoints)) as ex:
        downs = list(ex.map(down_one, range(len(endpoints))))
    t0 = time.perf_counter()
    for _ in range(50):
        if run(["docker", "-H", manager, "network", "rm", net], check=False).returncode == 0:
            break
        time.sleep(0.2)
    downs = [d + (time.perf_counter() - t0) for d in downs]
    return {"up": max(ups), "destroy": max(downs)}


def envrig_round(envrig: Path, endpoints, machines: int, parallel: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as d:
        d = Path(d)
        env = dict(ENV)
        env["ENVRIG_ENGINES"] = str(d / "engines.toml")
        env["ENVRIG_HOME"] = str(d / "home")
        env["ENVRIG_SUBNET_POOL"] = "198.19.96.0/19"
        for n, u in endpoints:
            run([str(envrig), "engine", "add", n, u], env=env)
        project = f"scale{uuid.uuid4().hex[:6]}"
        (d / "Envfile").write_text(envfile(project, machines))
        try:
            t0 = time.perf_counter()
            run([str(envrig), "up", "--parallel", str(parallel)], cwd=d, env=env)
            up = time.perf_counter() - t0
            # A name across hosts: from the first machine, the last (on another engine).
            t0 = time.perf_counter()
            last = f"m{machines - 1:03d}"
            resolved = None
            for _ in range(100):
                p = run([str(envrig), "exec", "m000", "--", "nslookup", last], cwd=d, env=env, check=False)
                if p.returncode == 0 and "Address" in p.stdout.split("Name:")[-1]:
                    resolved = time.perf_counter() - t0
                    break
                time.sleep(0.05)
            if resolved is None:
                raise BenchError(f"{last} never resolved from m000")
            statuses = []
            for _ in range(7):
                t1 = time.perf_counter()
                p = run([str(envrig), "status", "--json"], cwd=d, env=env)
                statuses.append(time.perf_counter() - t1)
            rows = json.loads(p.stdout.splitlines()[-1])["machines"]
            running = sum(1 for r in rows if r["state"] == "running")
            engines_used = len({r["engine"] for r in rows})
            if running != machines or engines_used != len(endpoints):
                raise BenchError(f"{running}/{machines} running on {engines_used} engines")
            t0 = time.perf_counter()
            run([str(envrig), "destroy", "-f"], cwd=d, env=env)
            destroy = time.perf_counter() - t0
        finally:
            run([str(envrig), "destroy", "-f"], cwd=d, env=env, check=False)
        left = sum(len(run(["docker", "-H", u, "ps", "-aq", "--filter",
                            f"label=dev.envrig.project={project}"]).stdout.split())
                   for _, u in endpoints)
        if left:
            raise BenchError(f"{left} containers left after destroy")
        return {"up": up, "status": statistics.median(statuses), "resolve": resolved,
                "destroy": destroy}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=100)
    ap.add_argument("--engines", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=8, help="per engine (envrig gets E x this)")
    ap.add_argument("--envrig", type=Path, default=REPO / "target" / "release" / "envrig")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--short", action="store_true", help="check it works; time nothing")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if not (1 <= a.rounds <= 20 and 1 <= a.machines <= 400 and 2 <= a.engines <= 8):
        ap.error("rounds 1-20, machines 1-400, engines 2-8")
    endpoints = rig(a.engines)
    print(f"bench_scale: {a.machines} machines over {[n for n, _ in endpoints]}, "
          f"{a.rounds} round(s), {a.parallel} at once per engine", file=sys.stderr)
    raws, ours = [], []
    for r in range(a.rounds):
        ours.append(envrig_round(a.envrig, endpoints, a.machines, a.parallel * a.engines))
        raws.append(raw_round(endpoints, a.machines, a.parallel))
        print(f"  round {r + 1}: envrig {ours[-1]}, raw {raws[-1]}", file=sys.stderr)
    med = lambda rows, k: statistics.median(x[k] for x in rows)
    res = {
        "up": (med(ours, "up"), med(raws, "up")),
        "destroy": (med(ours, "destroy"), med(raws, "destroy")),
        "status": med(ours, "status"),
        "resolve": med(ours, "resolve"),
    }
    targets = [
        ("up", res["up"][0], 1.3 * res["up"][1], f"<= 1.3x raw {res['up'][1]:.2f} s"),
        ("destroy", res["destroy"][0], 1.3 * res["destroy"][1], f"<= 1.3x raw {res['destroy'][1]:.2f} s"),
        ("status", res["status"], 0.060, "<= 60 ms"),
        ("name across hosts", res["resolve"], 1.0, "<= 1 s after up"),
    ]
    print(f"{'scenario':<20}{'envrig':>10}  target")
    missed = 0
    for name, got, limit, text in targets:
        ok = got <= limit
        missed += 0 if ok else 1
        print(f"{name:<20}{got:>9.3f}s  {text}  {'ok' if ok else 'MISSED'}")
    if a.json:
        a.json.write_text(json.dumps({"rounds": {"envrig": ours, "raw": raws}, "medians": res}, indent=2))
    if a.short:
        return 0
    return 1 if (a.check and missed) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench_scale: {e}", file=sys.stderr)
        sys.exit(1)
