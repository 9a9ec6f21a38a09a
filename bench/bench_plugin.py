#!/usr/bin/env python3
"""bench_plugin.py: what a provider plugin costs a command (docs/plugins.md).

A libvirt command starts `envrig-provider-libvirt` once; this measures that price, median
of N runs (default 20), Python 3 standard library only:

  hello         spawn the plugin until its hello line is read (process start, the dynamic
                loader's work on libvirt's libraries)
  connect       the same, then the `connect` call answered (libvirt connection opened)
  status-docker `envrig status` of a project with one Docker machine never brought up
  status-vm     `envrig status` of a project with one libvirt machine never brought up:
                the plugin is started, connected and asked for a list
  extra         status-vm minus status-docker: what a libvirt command costs beyond a Docker
                one (the plugin start, its list call through libvirtd, the core's own work)

The target (issue 15) is on `connect`: the plugin start a libvirt command pays, <= 20 ms.

    python3 bench/bench_plugin.py [--runs 20] [--bin target/release] [--check]
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_MS = 20.0
TIMEOUT = 30  # seconds for any one run


def spawn_plugin(plugin: Path, connect: bool) -> float:
    t0 = time.perf_counter()
    p = subprocess.Popen([str(plugin)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        hello = json.loads(p.stdout.readline())
        assert hello["name"] == "libvirt", hello
        if connect:
            p.stdin.write(b'{"id":1,"call":{"method":"connect"}}\n')
            p.stdin.flush()
            answer = json.loads(p.stdout.readline())
            assert answer.get("id") == 1 and "ok" in answer, answer
        elapsed = time.perf_counter() - t0
    finally:
        p.stdin.close()
        p.wait(timeout=TIMEOUT)
    return elapsed


def envrig_status(envrig: Path, folder: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(envrig), "status"], cwd=folder, check=True, timeout=TIMEOUT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, NO_COLOR="1"))
    return time.perf_counter() - t0


def project(root: Path, name: str, provider: str, base: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "Envfile").write_text(
        f'[project]\nname = "{name}"\n[boxes.b]\n{provider} = "{base}"\n'
        f'[machines.m]\nbox = "b"\nprovider = "{provider}"\n')
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bin", type=Path, default=REPO / "target" / "release")
    ap.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    a = ap.parse_args(argv)
    runs = max(5, min(a.runs, 200))
    envrig, plugin = a.bin / "envrig", a.bin / "envrig-provider-libvirt"
    for f in (envrig, plugin):
        if not f.exists():
            print(f"{f} is missing: cargo build --release --workspace --bins", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="envrig-bench-plugin-") as tmp:
        root = Path(tmp)
        docker = project(root, "bench-plugin-d", "docker", "envrig-test/busybox:latest")
        vm = project(root, "bench-plugin-v", "libvirt", "/nonexistent/box")
        samples = {k: [] for k in ("hello", "connect", "status-docker", "status-vm")}
        for _ in range(2):  # warm the page cache
            spawn_plugin(plugin, True)
            envrig_status(envrig, vm)
            envrig_status(envrig, docker)
        # Interleaved, so that a busy moment of the host hits every figure alike.
        for _ in range(runs):
            samples["hello"].append(spawn_plugin(plugin, False))
            samples["connect"].append(spawn_plugin(plugin, True))
            samples["status-docker"].append(envrig_status(envrig, docker))
            samples["status-vm"].append(envrig_status(envrig, vm))
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    extra = med["status-vm"] - med["status-docker"]
    print(f"{'figure':<16}{'median ms':>10}{'min':>8}{'max':>8}")
    for k, v in samples.items():
        print(f"{k:<16}{med[k]:>10.1f}{min(v) * 1000:>8.1f}{max(v) * 1000:>8.1f}")
    print(f"{'extra':<16}{extra:>10.1f}   (status-vm - status-docker)")
    ok = med["connect"] <= TARGET_MS
    print(f"plugin start (connect) {med['connect']:.1f} ms, target <= {TARGET_MS:.0f} ms: "
          f"{'PASS' if ok else 'FAIL'}  ({runs} runs)")
    return 0 if ok or not a.check else 1


if __name__ == "__main__":
    sys.exit(main())
