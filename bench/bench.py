#!/usr/bin/env python3
"""bench.py: envrig's Docker overhead, measured against raw `docker` commands.

Runs every scenario N times (default 7), timing only the command under test, and prints
one table of medians with the targets, plus every sample. Python 3 standard library only.
With --engine podman (or both) the same scenarios run on Podman: envrig's `podman`
provider against raw `podman` commands, with the same targets.

    python3 bench/bench.py                 # 7 runs per scenario
    python3 bench/bench.py --runs 9 --json /tmp/bench.json
    python3 bench/bench.py --check         # exit 1 when a target is missed
    python3 bench/bench.py --envrig /path/to/envrig   # another binary than target/release
    python3 bench/bench.py --engine both --runs 5     # Docker and Podman, one table

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
BASELINE: Path | None = None  # --baseline: a second envrig measured beside ENVRIG
HOST_SETUP = REPO / "scripts" / "host-setup.sh"
IMAGE = "envrig-test/busybox:latest"
RAW_PARALLEL = 8  # envrig's default `up --parallel`
PROVISION_SHELL = "echo provisioned > /tmp/p"  # the one step of the provisioning scenarios
PROVISION_FILE = "/tmp/p"
CMD_TIMEOUT = 180  # seconds; no single command may hang the benchmark
MIN_RUNS = 5
MAX_RUNS = 100

# The engine being measured: the raw CLI, and the Envfile's provider and box key, have its
# name. `--engine both` switches it between the rounds of each scenario.
ENGINES = ("docker", "podman")
ENGINE = "docker"
# What envrig says (stderr) when it had to start `podman system service` itself: a timed
# sample that says it is refused (the service start is not envrig's overhead).
SERVICE_STARTED = "started `podman system service`"

# One label value per benchmark invocation: raw containers and networks carry
# `envrig.bench=<TOKEN>`, so cleanup never touches anybody else's.
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


def engine_answers(eng: str | None = None) -> bool:
    """Docker: the daemon answers `docker version`. Podman: `podman version` works (the root
    CLI talks to its storage directly; the API service envrig uses is seen to separately,
    `start_podman_service`)."""
    eng = eng or ENGINE
    cmd = (["docker", "version", "--format", "{{.Server.APIVersion}}"] if eng == "docker"
           else ["podman", "version", "--format", "{{.Client.Version}}"])
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=10, env=CHILD_ENV)
        return p.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_answers() -> bool:
    return engine_answers("docker")


def image_present(eng: str | None = None) -> bool:
    """The test image is in the engine's storage (Podman lists it as localhost/...)."""
    try:
        p = subprocess.run([eng or ENGINE, "image", "inspect", IMAGE], capture_output=True,
                           timeout=30, env=CHILD_ENV)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0


def prepare(log, engines=("docker",)):
    """Each engine answers, test image present in it, release binary built."""
    if not all(engine_answers(e) and image_present(e) for e in engines):
        log(f"{'/'.join(engines)} does not answer (or {IMAGE} is missing): running "
            f"{HOST_SETUP.relative_to(REPO)}")
        subprocess.run(["bash", str(HOST_SETUP)], check=True, timeout=1800)
        for e in engines:
            if not engine_answers(e):
                raise BenchError(f"{e} still does not answer after host-setup.sh")
            if not image_present(e):
                raise BenchError(f"{IMAGE} is still missing from {e} after host-setup.sh")
    if not ENVRIG.exists():
        log("target/release/envrig is missing: cargo build --release -p envrig (takes minutes)")
        subprocess.run(
            ["cargo", "build", "--release", "-p", "envrig"], cwd=REPO, check=True, timeout=3600
        )
        if not ENVRIG.exists():
            raise BenchError(f"{ENVRIG} still missing after the build")


def podman_socket() -> Path | None:
    """Where envrig's podman provider looks for the API service (providers/docker/src/
    flavor.rs): CONTAINER_HOST's unix:// path, else root's /run/podman/podman.sock or the
    user's $XDG_RUNTIME_DIR/podman/podman.sock. None for a remote CONTAINER_HOST."""
    host = os.environ.get("CONTAINER_HOST", "")
    if host:
        return Path(host[len("unix://"):]) if host.startswith("unix://") else None
    if os.geteuid() == 0:
        return Path("/run/podman/podman.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return Path(runtime) / "podman" / "podman.sock"


def podman_service_answers() -> bool:
    """`GET /_ping` on the service's socket answers 200 (5 s at most); True when the socket is
    remote (not ours to check)."""
    sock = podman_socket()
    if sock is None:
        return True
    import socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            head = s.recv(256)
        return head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]
    except (OSError, IndexError):
        return False


# --- the two sides --------------------------------------------------------------------------


class Workspace:
    """Temp folders for envrig projects and the raw containers; cleans up after itself."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="envrig-bench-")).resolve()
        self.folders: list[Path] = []
        self.engine_of: dict[Path, str] = {}  # each project folder's engine
        self.engines_used: set[str] = set()  # where raw containers/networks may be
        self.seq = 0
        self.service_project: Path | None = None  # podman: an idle project to start it with

    # envrig side
    def new_project(self, machines: int, provision: bool = False) -> Path:
        """An Envfile with machines m1..mN; with provision, each has one inline shell step.
        Its provider and box key are ENGINE's."""
        self.seq += 1
        d = self.root / f"p{self.seq:03d}"
        d.mkdir()
        lines = [
            "[project]",
            'name = "bench"',
            # Provisioning is measured here, not baked layers (bench_bake.py measures those).
            "bake = false",
        ]
        if ENGINE != "docker":
            lines.append(f'provider = "{ENGINE}"')
        lines += [
            "[boxes.bb]",
            f'{ENGINE} = "{IMAGE}"',
            "[defaults]",
            'box = "bb"',
        ]
        for i in range(1, machines + 1):
            lines.append(f"[machines.m{i}]")
            if provision:
                lines += [f"[[machines.m{i}.provision]]", f"shell = {json.dumps(PROVISION_SHELL)}"]
        (d / "Envfile").write_text("\n".join(lines) + "\n")
        self.folders.append(d)
        self.engine_of[d] = ENGINE
        return d

    @staticmethod
    def envrig(d: Path, *args, binary: Path | None = None) -> list:
        return [str(binary or ENVRIG), "-C", str(d), *args]

    def cli(self, d: Path) -> str:
        """The raw CLI of project folder d's engine."""
        return self.engine_of.get(d, ENGINE)

    def envrig_ids(self, d: Path) -> list[str]:
        """Containers envrig made for project folder d (by its folder label)."""
        p = run(
            [self.cli(d), "ps", "-aq", "--no-trunc", "--filter", f"label=dev.envrig.folder={d}"],
            check=False,
        )
        return p.stdout.split()

    def envrig_networks(self, d: Path) -> list[str]:
        """Networks envrig made for project folder d (labelled like its machines; Podman's
        `network ls -q` gives names, which `network rm` takes as well)."""
        p = run([self.cli(d), "network", "ls", "-q", "--no-trunc", "--filter",
                 f"label=dev.envrig.folder={d}"], check=False)
        return p.stdout.split()

    def envrig_running(self, d: Path) -> int:
        p = run(
            [
                self.cli(d), "ps", "-q", "--filter", f"label=dev.envrig.folder={d}",
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
            run([self.cli(d), "rm", "-f", *left], check=False)
        nets = self.envrig_networks(d)
        if nets:
            run([self.cli(d), "network", "rm", *nets], check=False)

    def ensure_service(self):
        """Podman: the API service answers before a timed envrig command, so its start is
        never inside a sample. When it does not (it ends after its idle time), an untimed
        `envrig status` of an idle project starts it, as any envrig command would."""
        if ENGINE != "podman" or podman_service_answers():
            return
        if self.service_project is None:
            self.service_project = self.new_project(1)
        run(self.envrig(self.service_project, "status"), check=False)
        deadline = time.monotonic() + 30
        while not podman_service_answers():
            if time.monotonic() > deadline:
                raise BenchError(f"podman's API service does not answer on {podman_socket()}")
            time.sleep(0.2)

    def timed_envrig(self, d: Path, *args, binary=None) -> float:
        """The service seen to (untimed), then `envrig ARGS` timed; a sample in which envrig
        had to start the service itself is an error, not a figure."""
        self.ensure_service()
        ms, p = timed(self.envrig(d, *args, binary=binary))
        if SERVICE_STARTED in p.stderr:
            raise BenchError(f"envrig {' '.join(args)} started podman's service inside a "
                             f"timed sample: {p.stderr.strip()[-300:]}")
        return ms

    # raw side
    @staticmethod
    def raw_run_cmd(network: str | None = None) -> list:
        # Podman 4.3 takes the same flags: --init runs catatonit (containers.conf init_path)
        # where Docker runs docker-init (tini).
        net = ["--network", network] if network else []
        return [
            ENGINE, "run", "-d", "--init", "--label", RAW_LABEL, *net,
            "--entrypoint", "sleep", IMAGE, "infinity",
        ]

    def raw_network_name(self) -> str:
        self.seq += 1
        return f"envrig-bench-{TOKEN}-{self.seq}"

    @staticmethod
    def raw_networks(eng: str | None = None) -> list[str]:
        p = run([eng or ENGINE, "network", "ls", "-q", "--no-trunc", "--filter",
                 f"label={RAW_LABEL}"], check=False)
        return p.stdout.split()

    @staticmethod
    def raw_ids(eng: str | None = None) -> list[str]:
        p = run([eng or ENGINE, "ps", "-aq", "--no-trunc", "--filter", f"label={RAW_LABEL}"],
                check=False)
        return p.stdout.split()

    def clean_raw(self, eng: str | None = None):
        eng = eng or ENGINE
        ids = self.raw_ids(eng)
        if ids:
            run([eng, "rm", "-f", *ids], check=False)
        nets = self.raw_networks(eng)
        if nets:
            run([eng, "network", "rm", *nets], check=False)

    def close(self):
        """Best effort, bounded: every container and network this run made, on every engine
        it used, then the temp folders. Returns what is left."""
        for d in self.folders:
            if self.envrig_ids(d) or self.envrig_networks(d):
                self.clean_project(d)
        engines = sorted(self.engines_used | set(self.engine_of.values()))
        for eng in engines:
            self.clean_raw(eng)
        shutil.rmtree(self.root, ignore_errors=True)
        left = [f"{e}:{i}" for e in engines for i in self.raw_ids(e)]
        left += [f"{self.cli(d)}:{i}" for d in self.folders for i in self.envrig_ids(d)]
        left += [f"{e}:network:{n}" for e in engines for n in self.raw_networks(e)]
        left += [f"{self.cli(d)}:network:{n}" for d in self.folders
                 for n in self.envrig_networks(d)]
        return left


def _run_then_exec(cmd: list, provision: bool):
    """One raw machine: `docker run -d`, then (with provision) its `docker exec` step (the
    engine's CLI is cmd[0]). Returns (container id or None, error text or None)."""
    eng = cmd[0]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=CMD_TIMEOUT,
                           env=CHILD_ENV)
        if r.returncode != 0:
            return None, f"{eng} run: {r.stderr.strip()}"
        cid = r.stdout.strip()
        if provision:
            x = subprocess.run([eng, "exec", cid, "sh", "-c", PROVISION_SHELL],
                               capture_output=True, text=True, timeout=CMD_TIMEOUT,
                               env=CHILD_ENV)
            if x.returncode != 0:
                return cid, f"{eng} exec: exit {x.returncode} {x.stderr.strip()}"
        return cid, None
    except subprocess.TimeoutExpired as e:
        return None, f"timed out after {CMD_TIMEOUT} s: {e.cmd}"


def raw_up(n: int, pool: ThreadPoolExecutor, ws: Workspace | None = None,
           network: bool = False, provision: bool = False) -> tuple[float, list[str]]:
    """Timed: n `docker run -d` commands (`podman run -d` on Podman), RAW_PARALLEL at a time
    (one, directly, for n=1). With network, a `docker network create` first (timed too) and
    every container on it; with provision, each thread runs its container's `docker exec`
    step right after its run."""
    if n == 1 and not network and not provision:
        ms, p = timed(Workspace.raw_run_cmd())
        return ms, [p.stdout.strip()]
    t0 = time.perf_counter()
    net = None
    if network:
        net = ws.raw_network_name()
        try:
            r = subprocess.run([ENGINE, "network", "create", "--label", RAW_LABEL, net],
                               capture_output=True, text=True, timeout=CMD_TIMEOUT,
                               env=CHILD_ENV)
        except subprocess.TimeoutExpired:
            raise BenchError(f"timed out after {CMD_TIMEOUT} s: {ENGINE} network create")
        if r.returncode != 0:
            raise BenchError(f"raw {ENGINE} network create failed: {r.stderr.strip()}")
    cmd = Workspace.raw_run_cmd(net)
    futures = [pool.submit(_run_then_exec, cmd, provision) for _ in range(n)]
    results = [f.result() for f in futures]
    ms = (time.perf_counter() - t0) * 1000.0
    bad = [err for _, err in results if err]
    if bad:
        raise BenchError(f"raw side failed: {bad[0]}")
    return ms, [cid for cid, _ in results]


# --- scenarios ------------------------------------------------------------------------------
#
# Each function does one run of one side and returns the milliseconds of the command under
# test; setup and teardown happen outside the timing, and everything is removed at the end.


def check_provisioned(ws: Workspace, d: Path, what: str):
    """The step's file exists in one of project d's containers (m1's, or any)."""
    # (Podman, like Docker, ANDs two label filters of `ps`.)
    p = run([ws.cli(d), "ps", "-q", "--filter", f"label=dev.envrig.folder={d}",
             "--filter", "label=dev.envrig.machine=m1"], check=False)
    ids = p.stdout.split() or ws.envrig_ids(d)
    if not ids:
        raise BenchError(f"{what}: no container to check {PROVISION_FILE} in")
    x = run([ws.cli(d), "exec", ids[0], "test", "-f", PROVISION_FILE], check=False, timeout=30)
    if x.returncode != 0:
        raise BenchError(f"{what}: {PROVISION_FILE} is missing in {ids[0][:12]}")


def envrig_up(ws: Workspace, n: int, provision: bool = False, binary=None) -> float:
    d = ws.new_project(n, provision)
    try:
        ms = ws.timed_envrig(d, "up", binary=binary)
        got = ws.envrig_running(d)
        if got != n:
            raise BenchError(f"envrig up: {got} of {n} machines running")
        if provision:
            check_provisioned(ws, d, "envrig up")
        return ms
    finally:
        ws.clean_project(d)


def raw_up_side(ws: Workspace, n: int, pool, network: bool = False,
                provision: bool = False) -> float:
    ws.engines_used.add(ENGINE)
    try:
        ms, ids = raw_up(n, pool, ws, network, provision)
        running = run([ENGINE, "ps", "-q", "--filter", f"label={RAW_LABEL}",
                       "--filter", "status=running"]).stdout.split()
        if len(running) != n:
            raise BenchError(f"raw {ENGINE} run: {len(running)} of {n} containers running")
        if network and len(ws.raw_networks()) != 1:
            raise BenchError(f"raw {ENGINE} network create: the network is missing")
        return ms
    finally:
        ws.clean_raw()


def exec_events(d: Path, since: float, until: float, eng: str = "docker") -> int | None:
    """How many `exec_start` events project d's containers had between two host times
    (docker events is bounded by --until); None when the engine's events cannot tell."""
    if eng == "podman":
        return podman_exec_events(d, since, until)
    p = run(["docker", "events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
             "--filter", "type=container", "--filter", "event=exec_start",
             "--filter", f"label=dev.envrig.folder={d}", "--format", "{{.Action}}"],
            check=False, timeout=30)
    if p.returncode != 0:
        return None
    return len(p.stdout.split("\n")) - 1 if p.stdout.strip() else 0


def podman_exec_events(d: Path, since: float, until: float) -> int | None:
    """Podman's `exec` events (its name for exec_start) of project d between two host times.
    Podman 4.3's file event log stops reading at --until measured from now, so a --until in
    the past can return nothing at all: it is asked up to a moment just ahead (a 0.5 s wait)
    and the events are counted by their own time here."""
    ahead = time.time() + 0.5
    p = run(["podman", "events", "--since", f"{since:.3f}", "--until", f"{ahead:.3f}",
             "--filter", "type=container", "--filter", "event=exec",
             "--filter", f"label=dev.envrig.folder={d}", "--format", "{{.Time.UnixNano}}"],
            check=False, timeout=30)
    if p.returncode != 0:
        return None
    try:
        times = [int(x) / 1e9 for x in p.stdout.split()]
    except ValueError:
        return None
    return sum(1 for t in times if since <= t < until)


def envrig_after_up(ws: Workspace, n: int, *args, provision: bool = False,
                    binary=None) -> float:
    """Brings n machines up (untimed), then times `envrig ARGS`. With provision, the machines
    have a step; the setup `up` must have run it, and the timed command none (no exec)."""
    d = ws.new_project(n, provision)
    try:
        ws.ensure_service()
        t_setup = time.time()
        run(ws.envrig(d, "up", binary=binary))
        if ws.envrig_running(d) != n:
            raise BenchError("setup: envrig up did not start every machine")
        if provision:
            check_provisioned(ws, d, "setup: envrig up")
        ws.ensure_service()
        t0 = time.time()
        ms = ws.timed_envrig(d, *args, binary=binary)
        t1 = time.time()
        if provision:
            time.sleep(0.2)  # let the engine publish the last events
            setup_execs = exec_events(d, t_setup, t0, ws.cli(d))
            timed_execs = exec_events(d, t0, t1 + 0.1, ws.cli(d))
            if setup_execs is not None and setup_execs < n:
                raise BenchError(f"setup: envrig up made {setup_execs} execs for {n} steps")
            if timed_execs:
                raise BenchError(f"envrig {' '.join(args)}: {timed_execs} {ws.cli(d)} execs, "
                                 f"expected none (a no-op)")
        return ms
    finally:
        ws.clean_project(d)


def envrig_destroy(ws: Workspace, n: int, binary=None) -> float:
    d = ws.new_project(n)
    try:
        run(ws.envrig(d, "up", binary=binary))
        if ws.envrig_running(d) != n:
            raise BenchError("setup: envrig up did not start every machine")
        ms = ws.timed_envrig(d, "destroy", "-f", binary=binary)
        left = ws.envrig_ids(d)
        if left:
            raise BenchError(f"envrig destroy -f left {len(left)} containers")
        return ms
    finally:
        ws.clean_project(d)


def raw_destroy(ws: Workspace, n: int, pool) -> float:
    ws.engines_used.add(ENGINE)
    try:
        _, ids = raw_up(n, pool, ws)
        # Podman's `rm -f` stops first (SIGTERM, then SIGKILL after the stop timeout) where
        # Docker's kills; with --init, catatonit passes the SIGTERM on and sleep ends at once.
        ms, _ = timed([ENGINE, "rm", "-f", *ids])
        if ws.raw_ids():
            raise BenchError(f"{ENGINE} rm -f left containers")
        return ms
    finally:
        ws.clean_raw()


# name, label, envrig side, raw side (or None), target (kind, value), extra raw variants:
# (key, row label, side) compared with the same envrig samples, reported without a target.
def scenarios(ws, pool):
    rows = [
        ("up-1", "up, 1 machine",
         lambda b=None: envrig_up(ws, 1, binary=b), lambda: raw_up_side(ws, 1, pool),
         ("ratio", 1.15), []),
        ("up-10", "up, 10 machines (raw: network create + 10 runs)",
         lambda b=None: envrig_up(ws, 10, binary=b),
         lambda: raw_up_side(ws, 10, pool, network=True), ("ratio", 1.10),
         [("nonet", "  same, raw on the default bridge (no network)",
           lambda: raw_up_side(ws, 10, pool))]),
        ("status-10", "status, 10 running",
         lambda b=None: envrig_after_up(ws, 10, "status", binary=b), None, ("ms", 10.0), []),
        ("noop-up-10", "no-op up, 10 running",
         lambda b=None: envrig_after_up(ws, 10, "up", binary=b), None, ("ms", 15.0), []),
        ("prov-up-10", "up + 1 shell step, 10 machines",
         lambda b=None: envrig_up(ws, 10, provision=True, binary=b),
         lambda: raw_up_side(ws, 10, pool, network=True, provision=True), ("ratio", 1.25), []),
        ("prov-noop-10", "no-op up, 10 provisioned",
         lambda b=None: envrig_after_up(ws, 10, "up", provision=True, binary=b), None,
         ("ms", 80.0), []),
        ("destroy-1", "destroy -f, 1 machine",
         lambda b=None: envrig_destroy(ws, 1, binary=b), lambda: raw_destroy(ws, 1, pool),
         None, []),
        ("destroy-10", "destroy -f, 10 machines",
         lambda b=None: envrig_destroy(ws, 10, binary=b), lambda: raw_destroy(ws, 10, pool),
         None, []),
    ]
    # --baseline: another envrig binary (an older commit) measured in the same rounds, so
    # before and after are side by side in one run.
    if BASELINE is not None:
        for row in rows:
            fe = row[2]
            row[5].append(("baseline", "  same, the baseline envrig", lambda fe=fe: fe(BASELINE)))
    return rows


def measure(sides, runs: int, warmup: int):
    """Runs every side (a list of functions, None skipped) once per round, rotating which
    goes first (envrig first on round 0, then the next one, ...) so slow drift of the host
    does not favour any; warm-up rounds are not recorded. Returns one sample list per side."""
    live = [(k, fn) for k, fn in enumerate(sides) if fn is not None]
    out = [[] for _ in sides]
    for i in range(warmup + runs):
        s = i % len(live)
        for k, fn in live[s:] + live[:s]:
            ms = fn()
            if i >= warmup:
                out[k].append(ms)
    return out


# --- report ---------------------------------------------------------------------------------


def evaluate(name, label, e, r, target, extras=(), engine=None):
    """extras: (key, row label, samples) of additional raw variants, ratios without target.
    engine: the engine measured (bench.py's rows have one; other benchmarks leave it out)."""
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
    res = {
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
        "raw_variants": [
            {
                "variant": key,
                "label": xlabel,
                "raw_ms": xs,
                "raw_median_ms": round(statistics.median(xs), 1),
                "ratio": round(em / statistics.median(xs), 3),
            }
            for key, xlabel, xs in extras
        ],
    }
    if engine is not None:
        res = {"engine": engine, **res}
    return res


def print_table(results):
    # An engine column when the rows are not all Docker's (a plain Docker run prints the
    # table it always did).
    engines = {res.get("engine") for res in results} - {None}
    with_engine = bool(engines - {"docker"})
    hdr = ("scenario", "envrig ms", "raw ms", "ratio", "target", "result")
    if with_engine:
        hdr = ("engine", *hdr)
    rows = []
    for res in results:
        first = (res.get("engine") or "-",) if with_engine else ()
        rows.append((
            *first,
            res["label"],
            f"{res['envrig_median_ms']:.1f}",
            "-" if res["raw_median_ms"] is None else f"{res['raw_median_ms']:.1f}",
            "-" if res["ratio"] is None else f"{res['ratio']:.2f}x",
            res["target_text"],
            res["result"] or "-",
        ))
        for v in res["raw_variants"]:
            rows.append((*first, v["label"], f"{res['envrig_median_ms']:.1f}",
                         f"{v['raw_median_ms']:.1f}", f"{v['ratio']:.2f}x", "(info)", "-"))
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    left = {0, 4, 5} if not with_engine else {0, 1, 5, 6}
    line = lambda cells: "  ".join(
        c.ljust(w[i]) if i in left else c.rjust(w[i]) for i, c in enumerate(cells)
    )
    print(line(hdr))
    print("  ".join("-" * x for x in w))
    for row in rows:
        print(line(row))
    if any(r["scenario"] == "up-10" for r in results):
        cli = "docker" if not with_engine else "ENGINE"
        print("up-10: envrig's 10 machines get a private network (created in the timed `up`);"
              f" the target\ncompares with raw `{cli} network create` + 10 `{cli} run"
              " --network`; the `default bridge` row\nshows the ratio to raw runs with no"
              " network at all." + ("\n(ENGINE: the row's engine's own CLI, docker or podman.)"
                                    if with_engine else ""))
    if BASELINE is not None:
        print(f"baseline rows: ratio = this envrig / {BASELINE} (below 1: faster now).")


def print_samples(results):
    print("\nsamples (ms, in run order):")
    fmt = lambda xs: " ".join(f"{x:.0f}" if x >= 100 else f"{x:.1f}" for x in xs)
    with_engine = bool({res.get("engine") for res in results} - {None, "docker"})
    tag = lambda res: f"{res['engine']:<7}" if with_engine and res.get("engine") else ""
    for res in results:
        s = f"  {tag(res)}{res['scenario']:<12} envrig: {fmt(res['envrig_ms'])}"
        if res["raw_ms"]:
            s += f"  | raw: {fmt(res['raw_ms'])}"
        for v in res["raw_variants"]:
            s += f"  | raw+{v['variant']}: {fmt(v['raw_ms'])}"
        print(s)


def host_info(engines=("docker",)):
    def out(cmd):
        try:
            return run(cmd, check=False, timeout=30).stdout.strip()
        except (BenchError, OSError):
            return ""

    info = {
        "envrig_version": out([str(ENVRIG), "--version"]),
        "git_commit": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "docker_server": out(["docker", "version", "--format", "{{.Server.Version}}"]),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    if "podman" in engines:
        info["podman_version"] = out(["podman", "version", "--format", "{{.Client.Version}}"])
        # What Podman's run and network costs depend on: OCI runtime, cgroup manager and
        # version, network backend, events backend, rootless or not.
        info["podman_host"] = out(["podman", "info", "--format",
                                   "{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}} "
                                   "cgroups-{{.Host.CgroupsVersion}} {{.Host.NetworkBackend}} "
                                   "events={{.Host.EventLogger}} "
                                   "rootless={{.Host.Security.Rootless}}"])
        info["podman_socket"] = str(podman_socket() or os.environ.get("CONTAINER_HOST"))
    return info


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
                         "noop-up-10, prov-up-10, prov-noop-10, destroy-1, destroy-10")
    ap.add_argument("--baseline", metavar="PATH",
                    help="another envrig binary (e.g. built from an older commit) measured in "
                         "the same rounds; its rows give new/baseline ratios")
    ap.add_argument("--envrig", metavar="PATH",
                    help="the envrig binary to measure (default target/release/envrig; "
                         "never built when given)")
    ap.add_argument("--engine", choices=("docker", "podman", "both"), default="docker",
                    help="the engine measured: envrig's docker or podman provider against "
                         "the raw `docker` or `podman` CLI; both: every scenario on each, one "
                         "table (default docker)")
    args = ap.parse_args(argv)
    engines = list(ENGINES) if args.engine == "both" else [args.engine]
    if not MIN_RUNS <= args.runs <= MAX_RUNS:
        ap.error(f"--runs must be between {MIN_RUNS} and {MAX_RUNS}")
    if not 0 <= args.warmup <= 10:
        ap.error("--warmup must be between 0 and 10")

    global ENVRIG, BASELINE, ENGINE
    if args.baseline:
        BASELINE = Path(args.baseline).resolve()
        if not os.access(BASELINE, os.X_OK):
            ap.error(f"--baseline: {BASELINE} is not an executable file")
    if args.envrig:
        ENVRIG = Path(args.envrig).resolve()
        if not os.access(ENVRIG, os.X_OK):
            ap.error(f"--envrig: {ENVRIG} is not an executable file")

    log = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)
    try:
        prepare(log, engines)
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log(f"cannot prepare: {e}")
        return 2

    info = host_info(engines)
    log(f"{info['envrig_version']} ({info['git_commit']}), docker {info['docker_server']}, "
        f"{info['cpus']} CPUs; {args.runs} runs (+{args.warmup} warm-up) per side")
    if "podman" in engines:
        log(f"podman {info['podman_version']} ({info['podman_host']}), API service on "
            f"{info['podman_socket']}")

    ws = Workspace()
    results = []
    started = time.monotonic()
    try:
        if "podman" in engines:
            # Once, untimed: the CLI's first run (storage, network config) and the API service
            # envrig talks to; envrig would start the service in its first command, but that
            # start must not be in a sample (Workspace.ensure_service sees to it later too).
            ENGINE = "podman"
            run(["podman", "ps"])
            ws.ensure_service()
            log(f"podman's API service answers on {podman_socket()}")
        with ThreadPoolExecutor(max_workers=RAW_PARALLEL) as pool:
            todo = scenarios(ws, pool)
            if args.only:
                unknown = set(args.only) - {s[0] for s in todo}
                if unknown:
                    log(f"unknown scenario(s): {', '.join(sorted(unknown))}")
                    return 2
                todo = [s for s in todo if s[0] in args.only]
            # Scenario by scenario, each engine in turn (the sides read ENGINE when they run),
            # so both engines' figures of a scenario come from the same stretch of time.
            for name, label, fe, fr, target, extras in todo:
                for eng in engines:
                    ENGINE = eng
                    t0 = time.monotonic()
                    e, r, *xs = measure([fe, fr, *(fn for _, _, fn in extras)],
                                        args.runs, args.warmup)
                    results.append(evaluate(
                        name, label, e, r, target,
                        [(k, lb, x) for (k, lb, _), x in zip(extras, xs)],
                        engine=eng))
                    log(f"{name}{'' if len(engines) == 1 else ' (' + eng + ')'}: done in "
                        f"{time.monotonic() - t0:.0f} s")
    except BenchError as e:
        log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        left = ws.close()
        if left:
            log(f"WARNING: {len(left)} containers/networks could not be removed: "
                f"{' '.join(left)}")

    print()
    print_table(results)
    print_samples(results)
    failed = [res["scenario"] + (f" ({res['engine']})" if len(engines) > 1 else "")
              for res in results if res["result"] == "FAIL"]
    print(f"\n{len(failed)} target(s) missed" + (f": {', '.join(failed)}" if failed else "")
          + f"; total {time.monotonic() - started:.0f} s")

    if args.json:
        doc = {
            "runs": args.runs,
            "warmup": args.warmup,
            "raw_parallel": RAW_PARALLEL,
            "image": IMAGE,
            "engines": engines,
            "host": info,
            "envrig_binary": str(ENVRIG),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "results": results,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")

    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
