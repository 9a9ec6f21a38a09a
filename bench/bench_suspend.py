#!/usr/bin/env python3
"""bench_suspend.py: `envrig suspend` / `resume` of a VM against raw `virsh` on the same domain.

One libvirt machine of the small test guest is brought up; then N rounds, interleaved:
`envrig suspend` + `envrig resume` (each timed until envrig returns), and raw `virsh
managedsave` + `virsh start` of the same domain. After every resume a process started
before the first suspend must still be running (its memory came back). Medians.

    python3 bench/bench_suspend.py --runs 5 [--envrig target/release/envrig]

Python 3 standard library only; the environment is destroyed at the end, also on failure.
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
GUEST = Path(os.environ.get("ENVRIG_TEST_GUEST", "/var/cache/envrig-test/guests/small-latest"))
ENV = {k: v for k, v in os.environ.items() if not k.startswith("ENVRIG_")}
ENV["NO_COLOR"] = "1"


def run(cmd, cwd=None, check=True, timeout=300):
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        sys.exit(f"bench_suspend: failed: {' '.join(map(str, cmd))}\n{p.stdout}{p.stderr}")
    return p


def timed(cmd, cwd=None) -> float:
    t0 = time.perf_counter()
    run(cmd, cwd=cwd)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--envrig", type=Path, default=REPO / "target" / "release" / "envrig")
    a = ap.parse_args()
    if not 1 <= a.runs <= 50:
        ap.error("--runs: 1-50")
    ev = str(a.envrig.resolve())
    with tempfile.TemporaryDirectory(prefix="bench-suspend-") as d:
        (Path(d) / "Envfile").write_text(
            f'[project]\nname = "bsusp"\nbake = false\n[boxes.tiny]\nlibvirt = "{GUEST.resolve()}"\n'
            '[machines.vm]\nbox = "tiny"\nprovider = "libvirt"\nmemory = "256MiB"\n'
        )
        try:
            run([ev, "up"], cwd=d)
            dom = json.loads(run([ev, "status", "--json"], cwd=d).stdout.splitlines()[-1])[
                "machines"][0]["resource_name"]
            pid = run([ev, "exec", "vm", "--", "sh", "-c", "sleep 100000 >/dev/null 2>&1 & echo $!"],
                      cwd=d).stdout.strip()

            def alive():
                got = run([ev, "exec", "vm", "--", "pidof", "sleep"], cwd=d).stdout.split()
                if pid not in got:
                    sys.exit(f"bench_suspend: process {pid} lost ({got})")

            rows = {"envrig suspend": [], "envrig resume": [], "virsh managedsave": [],
                    "virsh start": []}
            virsh = ["virsh", "-c", "qemu:///system"]
            for _ in range(a.runs):
                rows["envrig suspend"].append(timed([ev, "suspend"], cwd=d))
                rows["envrig resume"].append(timed([ev, "resume"], cwd=d))
                alive()
                rows["virsh managedsave"].append(timed(virsh + ["managedsave", dom]))
                rows["virsh start"].append(timed(virsh + ["start", dom]))
                alive()
        finally:
            run([ev, "destroy", "-f"], cwd=d, check=False)
    print(f"{'operation':<20}{'median':>9}  min-max ({a.runs} runs)")
    for k, v in rows.items():
        print(f"{k:<20}{statistics.median(v):>8.2f}s  {min(v):.2f}-{max(v):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
