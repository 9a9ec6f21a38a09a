#!/usr/bin/env python3
"""bench_cache.py: the team's layer cache (a registry) against no provisioning and `docker pull`.

On the rig of scripts/engines.sh (`up 3 2`), a registry (Debian's `docker-registry serve`)
listens on the rig link's root address. Host A (d1) runs `envrig up --push` of an Envfile of
M machines of one recipe whose `once` step writes MiB of random data (so the layer is worth
pulling), with ENVRIG_CACHE set, then destroys them. Then R rounds on host B (d2), each:

  cache    B has no copy of the layer (its image removed, dangling layers pruned); `envrig up`
           of the same Envfile in a fresh folder with a fresh ENVRIG_HOME: it must say
           `pulled layer` and no `running step`. Timed; destroyed untimed.
  plain    `envrig up` of the same M machines with no `provision` key at all (the base image
           is there): the target's denominator. Timed; destroyed untimed.
  pull     raw `docker -H B pull REGISTRY/REPO:TAG` of the same layer image, after removing it.

Medians of R rounds. Python 3 standard library only.

    python3 bench/bench_cache.py                     # 10 machines, 40 MiB, 5 runs
    python3 bench/bench_cache.py --runs 1 --mib 8    # a quick look
    python3 bench/bench_cache.py --check --json /tmp/cache.json

Target (the issue): up of 10 provisioned machines from the cache <= 1.3x an up of the same 10
with no provisioning; pull throughput reported against `docker pull` of the same image.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGE = "envrig-test/busybox:latest"
TIMEOUT = 300
TARGET = 1.3
TOKEN = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("ENVRIG_", "DOCKER_"))}
ENV["NO_COLOR"] = "1"


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"bench_cache: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, cwd=None, env=None, timeout=TIMEOUT):
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd,
                           env=env or ENV, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout} s: {' '.join(map(str, cmd))}")
    if check and p.returncode != 0:
        raise BenchError(f"failed (exit {p.returncode}): {' '.join(map(str, cmd))}\n"
                         f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return p


def timed(cmd, **kw):
    t0 = time.perf_counter()
    p = run(cmd, **kw)
    return time.perf_counter() - t0, p


def rig() -> dict[str, str]:
    """The rig's Docker endpoints by name (`up 3 2`: the tests' shape; idempotent)."""
    out = run(["bash", REPO / "scripts/engines.sh", "up", "3", "2"], timeout=240).stdout
    eps = {l.split()[0]: l.split()[1] for l in out.splitlines()
           if len(l.split()) == 2 and l.split()[1].startswith("tcp://")}
    if "d1" not in eps or "d2" not in eps:
        raise BenchError(f"the rig has no d1 and d2:\n{out}")
    return eps


class Registry:
    """`docker-registry serve` on the rig link's root address (.1), storage in a temp folder."""

    def __init__(self, d1: str, root: Path):
        host = d1.removeprefix("tcp://").split(":")[0]
        ip = host.rsplit(".", 1)[0] + ".1"
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        self.addr = f"{ip}:{port}"
        self.root = root
        conf = root / "registry.yml"
        conf.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
                        f"http:\n  addr: {self.addr}\n")
        if not shutil.which("docker-registry"):
            raise BenchError("docker-registry is not installed (scripts/host-setup.sh installs it)")
        self.logf = open(root / "registry.log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.logf, env=ENV)
        for _ in range(100):
            try:
                socket.create_connection((ip, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise BenchError(f"the registry does not answer on {self.addr}")

    def get(self, path: str, accept: str = "application/json") -> dict:
        req = urllib.request.Request(f"http://{self.addr}{path}", headers={"Accept": accept})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(req, timeout=10) as r:
            return json.loads(r.read())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.logf.close()


def envfile(project: str, machines: int, mib: int | None) -> str:
    """M machines of one recipe; with `mib`, one `once` step writing that much random data."""
    text = (f'[project]\nname = "{project}"\n\n[boxes.bb]\ndocker = "{IMAGE}"\n\n'
            f'[defaults]\nbox = "bb"\n')
    if mib is not None:
        text += (f'provision = [{{ shell = "dd if=/dev/urandom of=/payload.bin bs=1M count={mib} '
                 f'2>/dev/null && echo {TOKEN} > /stamp" }}]\n')
    text += "\n" + "".join(f"[machines.m{i:02d}]\n" for i in range(machines))
    return text


class Side:
    """One checkout on one host: its own folder, ENVRIG_HOME, DOCKER_HOST and cache."""

    def __init__(self, exe: Path, tmp: Path, name: str, host: str, text: str, cache: str | None):
        self.exe, self.dir, self.host = exe, tmp / name, host
        self.dir.mkdir()
        (self.dir / "Envfile").write_text(text)
        self.env = dict(ENV)
        self.env.update({"ENVRIG_HOME": str(self.dir / "home"), "DOCKER_HOST": host})
        self.env["ENVRIG_CACHE"] = cache or ""
        self.up_done = False

    def envrig(self, *args, check=True, timeout=TIMEOUT):
        return run([self.exe, *args], cwd=self.dir, env=self.env, check=check, timeout=timeout)

    def up(self, *args) -> tuple[float, subprocess.CompletedProcess]:
        self.up_done = True
        return timed([self.exe, "up", *args], cwd=self.dir, env=self.env)

    def destroy(self) -> None:
        if self.up_done:
            self.envrig("destroy", "-f", check=False)
            self.up_done = False


def docker(host: str, *args, check=True, timeout=TIMEOUT):
    return run(["docker", "-H", host, *args], check=check, timeout=timeout)


def drop_layer(host: str, layer: str, ref: str) -> None:
    """Host `host` has neither the layer (local name) nor the registry's tag, nor dangling
    layers left by them."""
    for name in (f"{layer}:latest", ref):
        docker(host, "rmi", "-f", name, check=False)
    docker(host, "image", "prune", "-f", check=False, timeout=120)
    for name in (f"{layer}:latest", ref):
        if docker(host, "image", "inspect", name, check=False).returncode == 0:
            raise BenchError(f"{name} is still on {host} after removing it")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--machines", type=int, default=10)
    ap.add_argument("--mib", type=int, default=40, help="random data the step writes (MiB)")
    ap.add_argument("--envrig", type=Path, default=REPO / "target" / "release" / "envrig")
    ap.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if not (1 <= a.runs <= 20 and 1 <= a.machines <= 50 and 1 <= a.mib <= 200):
        ap.error("runs 1-20, machines 1-50, mib 1-200")
    exe = a.envrig.resolve()
    if not os.access(exe, os.X_OK):
        raise BenchError(f"{exe} is missing: build it first (cargo build --release)")
    eps = rig()
    host_a, host_b = eps["d1"], eps["d2"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    sides: list[Side] = []
    registry = None
    layer = ref = project = None
    started = time.perf_counter()
    samples: dict[str, list[float]] = {"cache": [], "plain": [], "envrig_pull": [], "docker_pull": []}
    try:
        (tmp / "registry").mkdir()
        registry = Registry(host_a, tmp / "registry")
        repo = f"bench/cache-{TOKEN}"
        cache = f"{registry.addr}/{repo}"
        project = f"cache{uuid.uuid4().hex[:6]}"
        text = envfile(project, a.machines, a.mib)
        log(f"{a.machines} machines, one recipe writing {a.mib} MiB; A={host_a} B={host_b}; "
            f"cache {cache}; {a.runs} run(s)")

        # Host A bakes and pushes the one layer.
        side_a = Side(exe, tmp, "a", host_a, text, cache)
        sides.append(side_a)
        secs, p = side_a.up("--push")
        m = re.search(r"pushed layer (envrig-baked-\S+) to the cache \((\S+)\) in ([0-9.]+)s", p.stderr)
        if not m:
            raise BenchError(f"host A pushed no layer:\n{p.stderr[-3000:]}")
        layer, ref, push_s = m.group(1), m.group(2), float(m.group(3))
        log(f"host A: up --push {secs:.1f} s (push of {layer} {push_s:.1f} s)")
        side_a.destroy()
        drop_layer(host_a, layer, ref)

        # The layer's bytes: the manifest's blobs beyond the base image's (B has those).
        tag = ref.rsplit(":", 1)[1]
        man = registry.get(f"/v2/{repo}/manifests/{tag}",
                           "application/vnd.docker.distribution.manifest.v2+json")
        base = json.loads(docker(host_b, "image", "inspect", IMAGE).stdout)[0]["RootFS"]["Layers"]
        new_blobs = man["layers"][len(base):]
        layer_bytes = sum(b["size"] for b in new_blobs)
        total_bytes = sum(b["size"] for b in man["layers"])
        log(f"layer {ref}: {len(man['layers'])} blobs, {total_bytes / 1e6:.1f} MB, "
            f"{len(new_blobs)} new to B ({layer_bytes / 1e6:.1f} MB)")

        plain_text = envfile(f"plain{uuid.uuid4().hex[:6]}", a.machines, None)
        for r in range(a.runs):
            # cache: B has no copy; a fresh checkout and home pull it.
            drop_layer(host_b, layer, ref)
            b = Side(exe, tmp, f"b{r}", host_b, text, cache)
            sides.append(b)
            secs, p = b.up()
            pulls = re.findall(r"pulled layer \S+ from the cache \(\S+\) in ([0-9.]+)s", p.stderr)
            if len(pulls) != 1 or "running step" in p.stderr:
                raise BenchError(f"round {r + 1}: up on B did not take the layer from the cache "
                                 f"(pulled {len(pulls)}):\n{p.stderr[-3000:]}")
            got = b.envrig("exec", "m00", "--", "cat", "/stamp").stdout.strip()
            if got != TOKEN:
                raise BenchError(f"round {r + 1}: m00 holds {got!r}, not host A's stamp")
            samples["cache"].append(secs)
            samples["envrig_pull"].append(float(pulls[0]))
            b.destroy()

            # plain: the same machines, no provisioning.
            c = Side(exe, tmp, f"c{r}", host_b, plain_text, None)
            sides.append(c)
            secs, p = c.up()
            if "running step" in p.stderr or "pulled layer" in p.stderr:
                raise BenchError(f"round {r + 1}: the plain up provisioned:\n{p.stderr[-2000:]}")
            samples["plain"].append(secs)
            c.destroy()

            # raw docker pull of the same image.
            drop_layer(host_b, layer, ref)
            secs, _ = timed(["docker", "-H", host_b, "pull", "-q", ref])
            samples["docker_pull"].append(secs)
            drop_layer(host_b, layer, ref)
            log(f"round {r + 1}: cache up {samples['cache'][-1]:.2f} s (pull "
                f"{samples['envrig_pull'][-1]:.1f} s), plain up {samples['plain'][-1]:.2f} s, "
                f"docker pull {secs:.2f} s")
    finally:
        for s in reversed(sides):
            try:
                s.destroy()
            except BenchError as e:
                log(f"cleanup: {e}")
        for h in (host_a, host_b):
            if layer:
                try:
                    drop_layer(h, layer, ref)
                except BenchError as e:
                    log(f"cleanup: {e}")
            left = docker(h, "ps", "-aq", "--filter", f"label=dev.envrig.project={project}",
                          check=False).stdout.split() if project else []
            if left:
                log(f"cleanup: {len(left)} containers of {project} left on {h}; removing")
                docker(h, "rm", "-f", *left, check=False)
        if registry:
            registry.close()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio = med["cache"] / med["plain"]
    mbs = lambda s: layer_bytes / 1e6 / s if s > 0 else float("inf")
    print(f"\n{a.machines} machines, one recipe, a {a.mib} MiB step; layer {layer_bytes / 1e6:.1f} MB "
          f"compressed; {a.runs} run(s), medians; {time.perf_counter() - started:.0f} s in all")
    print(f"{'figure':34} {'seconds':>8}  {'note'}")
    print(f"{'up from the cache (B)':34} {med['cache']:8.2f}  ratio {ratio:.2f}x, target <= {TARGET}x: "
          f"{'met' if ratio <= TARGET else 'MISSED'}")
    print(f"{'up, no provisioning (B)':34} {med['plain']:8.2f}")
    print(f"{'  of which envrig pull (its words)':34} {med['envrig_pull']:8.2f}  "
          f"{mbs(med['envrig_pull']):.0f} MB/s")
    print(f"{'docker pull of the same image':34} {med['docker_pull']:8.2f}  "
          f"{mbs(med['docker_pull']):.0f} MB/s")
    print("samples (s, in run order):")
    for k, v in samples.items():
        print(f"  {k:12} " + " ".join(f"{x:.2f}" for x in v))
    if a.json:
        a.json.write_text(json.dumps({"samples": samples, "medians": med, "ratio": ratio,
                                      "layer_bytes": layer_bytes, "machines": a.machines,
                                      "mib": a.mib}, indent=2))
    return 1 if (a.check and ratio > TARGET) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        log(f"error: {e}")
        sys.exit(2)
