#!/usr/bin/env python3
"""bench_snap.py: envrig's snapshots, export and import, measured against the raw engine.

For each provider (Docker, libvirt) one 1-machine envrig environment and one equivalent raw
machine (a `docker run` container, a `virsh define`d domain of the same test guest) are made
once; then, N times each after a warm-up, side by side:

  snapshot save      `envrig snapshot save`     vs `docker commit` / `virsh snapshot-create-as`
  snapshot restore   `envrig snapshot restore`  vs `docker rm -f` + `docker run` /
                                                   `virsh snapshot-revert --running` + agent ping
  export             `envrig export -o FILE`    vs `docker save | zstd` / `qemu-img convert`
                                                   + `tar | zstd`  (MB/s and file sizes)
  import             `envrig import FILE -C DIR` vs `zstd -d | docker load` / `zstd -d | tar -x`
                                                   (and, as info, + starting the machine)

Python 3 standard library only; reuses bench.py's helpers.

    python3 bench/bench_snap.py --runs 5 --envrig /path/to/envrig
    python3 bench/bench_snap.py --only docker --json /tmp/snap.json
    python3 bench/bench_snap.py --check     # exit 1 when a save/restore target is missed

See bench/README.md ("bench_snap.py") for what each scenario measures.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (bench.py beside this file: run, timed, TOKEN, CHILD_ENV...)
from bench import BenchError, run  # noqa: E402

REPO = bench.REPO
IMAGE = bench.IMAGE
TOKEN = bench.TOKEN  # pid-random: every raw resource carries it
RAW_LABEL = bench.RAW_LABEL
RAW_PREFIX = f"envrig-bench-{TOKEN}"  # raw container, domain and image names
RAW_REPO = f"envrig-bench-{TOKEN}"  # raw images: RAW_REPO:snap, :exp, :tmp
GUEST = Path(os.environ.get("ENVRIG_TEST_GUEST", "/var/cache/envrig-test/guests/small-latest"))
LIBVIRT_IMAGES = Path(os.environ.get("ENVRIG_LIBVIRT_IMAGES", "/var/lib/libvirt/images/envrig"))
VIRSH = ["virsh", "-c", "qemu:///system"]
ENVRIG = bench.ENVRIG

SNAP = "bsnap"  # the snapshot of the save/restore scenarios
EXP = "bexp"  # the snapshot holding the payload (export --snapshot, import)
MARKER = "bench-marker"
TARGET = ("ratio", 1.10)  # save and restore: envrig <= 1.1x raw
MIN_RUNS, MAX_RUNS = 5, 50
BOOT_WAIT = 300.0  # s: a TCG boot, or a revert, must answer within this
LONG_TIMEOUT = 900  # s: one import or export of a VM (bounded anyway)
MB = 1_000_000  # throughput in MB/s = 10^6 bytes per second

CHILD_ENV = bench.CHILD_ENV

log = lambda msg: print(f"bench_snap: {msg}", file=sys.stderr, flush=True)  # noqa: E731


# --- processes ------------------------------------------------------------------------------


def envrig(d: Path, *args) -> list:
    return [str(ENVRIG), "-C", str(d), *args]


def timed(cmd, timeout=bench.CMD_TIMEOUT) -> float:
    """Milliseconds of one command (must succeed); only the child is timed."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, env=CHILD_ENV)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout} s: {' '.join(map(str, cmd))}")
    ms = (time.perf_counter() - t0) * 1000.0
    if p.returncode != 0:
        raise BenchError(f"failed (exit {p.returncode}): {' '.join(map(str, cmd))}\n"
                         f"{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return ms


def timed_sh(script: str, timeout=bench.CMD_TIMEOUT) -> float:
    """A raw pipeline, as one `bash -o pipefail -c SCRIPT` (a failing stage fails it)."""
    return timed(["bash", "-o", "pipefail", "-c", script], timeout=timeout)


def sh_ok(script: str, timeout=bench.CMD_TIMEOUT) -> subprocess.CompletedProcess:
    return run(["bash", "-o", "pipefail", "-c", script], timeout=timeout)


def q(x) -> str:
    return shlex.quote(str(x))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload_script(mib: int) -> str:
    """Half incompressible (urandom), half repetitive text; synced to the disk."""
    rand = mib // 2
    text = (mib - rand) << 20
    return (f"set -e; dd if=/dev/urandom of=/root/payload.rand bs=1048576 count={rand} "
            f"2>/dev/null; yes 'envrig bench payload: some compressible text 0123456789' "
            f"| head -c {text} > /root/payload.txt; sync")


CHECK_PAYLOAD = f"cat /root/marker && test -s /root/payload.rand && test -s /root/payload.txt"
SET_MARKER = f"echo {MARKER} > /root/marker && sync"
DROP_MARKER = "rm -f /root/marker && sync"


def pipe_bytes(cmd: list, timeout=LONG_TIMEOUT) -> int:
    """The number of bytes `cmd` writes to stdout (untimed; read in chunks, never kept)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=CHILD_ENV)
    n, t0 = 0, time.monotonic()
    try:
        while True:
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"timed out after {timeout} s: {' '.join(cmd)}")
            chunk = p.stdout.read(1 << 20)
            if not chunk:
                break
            n += len(chunk)
        if p.wait(timeout=60) != 0:
            raise BenchError(f"failed: {' '.join(cmd)}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return n


def envfile(d: Path, text: str) -> Path:
    d.mkdir(parents=True)
    (d / "Envfile").write_text(text)
    return d


def status(d: Path) -> dict:
    return json.loads(run(envrig(d, "status", "--json")).stdout)


def snapshot_names(d: Path) -> list[str]:
    doc = json.loads(run(envrig(d, "snapshot", "list", "--json")).stdout)
    return [s["name"] for s in doc["snapshots"]]


# --- the Docker side ------------------------------------------------------------------------


def docker_ids(*filters, all_=True) -> list[str]:
    args = ["docker", "ps", "-q", "--no-trunc"] + (["-a"] if all_ else [])
    for f in filters:
        args += ["--filter", f]
    return run(args, check=False).stdout.split()


def docker_images(*filters) -> list[str]:
    args = ["docker", "images", "-a", "-q", "--no-trunc"]
    for f in filters:
        args += ["--filter", f]
    return sorted(set(run(args, check=False).stdout.split()))


def dexec(cid: str, script: str, check=True, timeout=bench.CMD_TIMEOUT):
    return run(["docker", "exec", cid, "sh", "-c", script], check=check, timeout=timeout)


class DockerSuite:
    name = "docker"

    def __init__(self, root: Path, payload_mib: int):
        self.root = root / "docker"
        self.root.mkdir()
        self.payload_mib = payload_mib
        self.src = self.root / "env"
        self.env_ids: set[str] = set()  # every envrig environment made (source, imports)
        self.folders: list[Path] = []
        self.raw_name = f"{RAW_PREFIX}-m1"
        self.cid: str | None = None
        self.state_bytes = 0
        self.seq = 0
        self.notes: list[str] = []

    # -- helpers
    def envrig_cid(self, d: Path) -> str:
        ids = docker_ids(f"label=dev.envrig.folder={d}", "status=running", all_=False)
        if len(ids) != 1:
            raise BenchError(f"{d}: {len(ids)} running containers, expected 1")
        return ids[0]

    def raw_run(self, image: str, name: str) -> str:
        return run(["docker", "run", "-d", "--init", "--hostname", "m1", "--label", RAW_LABEL,
                    "--name", name, "--entrypoint", "sleep", image, "infinity"]).stdout.strip()

    def commit_raw(self, tag: str):
        run(["docker", "commit", "--change", f"LABEL {RAW_LABEL}", self.cid,
             f"{RAW_REPO}:{tag}"])

    def out(self, what: str) -> Path:
        self.seq += 1
        return self.root / f"{what}-{self.seq:03d}.tar.zst"

    # -- setup
    def setup(self):
        envfile(self.src, "\n".join([
            "[project]", 'name = "benchsnap"',
            "[boxes.bb]", f'docker = "{IMAGE}"',
            "[machines.m1]", 'box = "bb"', ""]))
        self.folders.append(self.src)
        run(envrig(self.src, "up"))
        self.env_ids.add(status(self.src)["env_id"])
        dexec(self.envrig_cid(self.src), SET_MARKER)
        self.cid = self.raw_run(IMAGE, self.raw_name)
        dexec(self.cid, SET_MARKER)

    # -- snapshot save: the previous snapshot of the name is deleted first, untimed
    def save_envrig(self) -> float:
        run(envrig(self.src, "snapshot", "delete", SNAP), check=False)
        ms = timed(envrig(self.src, "snapshot", "save", SNAP, "--force"))
        if SNAP not in snapshot_names(self.src):
            raise BenchError("envrig snapshot save: the snapshot is not listed")
        return ms

    def save_raw(self) -> float:
        run(["docker", "rmi", "-f", f"{RAW_REPO}:snap"], check=False)
        ms = timed(["docker", "commit", "--change", f"LABEL {RAW_LABEL}", self.cid,
                    f"{RAW_REPO}:snap"])
        run(["docker", "image", "inspect", f"{RAW_REPO}:snap"])
        return ms

    def prep_restore(self):
        if SNAP not in snapshot_names(self.src):
            run(envrig(self.src, "snapshot", "save", SNAP, "--force"))
        if run(["docker", "image", "inspect", f"{RAW_REPO}:snap"], check=False).returncode:
            self.commit_raw("snap")

    # -- snapshot restore: the marker is removed first (untimed), and must be back after
    def restore_envrig(self) -> float:
        dexec(self.envrig_cid(self.src), DROP_MARKER)
        ms = timed(envrig(self.src, "snapshot", "restore", SNAP))
        got = dexec(self.envrig_cid(self.src), "cat /root/marker", check=False).stdout.strip()
        if got != MARKER:
            raise BenchError(f"envrig snapshot restore: marker is {got!r}")
        return ms

    def restore_raw(self) -> float:
        dexec(self.cid, DROP_MARKER)
        ms = timed(["docker", "rm", "-f", self.cid])
        t0 = time.perf_counter()
        self.cid = self.raw_run(f"{RAW_REPO}:snap", self.raw_name)
        ms += (time.perf_counter() - t0) * 1000.0
        got = dexec(self.cid, "cat /root/marker", check=False).stdout.strip()
        if got != MARKER:
            raise BenchError(f"raw restore: marker is {got!r}")
        return ms

    # -- export
    def prep_export(self):
        script = payload_script(self.payload_mib)
        dexec(self.envrig_cid(self.src), script, timeout=600)
        dexec(self.cid, script, timeout=600)
        run(envrig(self.src, "snapshot", "save", EXP, "--force"))
        run(["docker", "rmi", "-f", f"{RAW_REPO}:exp"], check=False)
        self.commit_raw("exp")
        self.state_bytes = pipe_bytes(["docker", "save", f"{RAW_REPO}:exp"])
        log(f"docker: machine state (docker save of the raw snapshot) "
            f"{self.state_bytes / MB:.1f} MB")

    def export_snap_envrig(self):
        out = self.out("e-snap")
        ms = timed(envrig(self.src, "export", "--snapshot", EXP, "-o", out), timeout=LONG_TIMEOUT)
        size = out.stat().st_size
        out.unlink()
        return ms, size

    def export_snap_raw(self):
        out = self.out("r-snap")
        ms = timed_sh(f"docker save {RAW_REPO}:exp | zstd -T0 -3 -q -c > {q(out)}",
                      timeout=LONG_TIMEOUT)
        size = out.stat().st_size
        out.unlink()
        return ms, size

    def export_now_envrig(self):
        out = self.out("e-now")
        ms = timed(envrig(self.src, "export", "-o", out), timeout=LONG_TIMEOUT)
        size = out.stat().st_size
        out.unlink()
        left = [n for n in snapshot_names(self.src) if n.startswith("export-")]
        if left:
            raise BenchError(f"envrig export left its temporary snapshot {left}")
        return ms, size

    def export_now_raw(self):
        out = self.out("r-now")
        tmp = f"{RAW_REPO}:tmp"
        ms = timed_sh(f"docker commit --change {q('LABEL ' + RAW_LABEL)} {self.cid} {tmp} "
                      f">/dev/null && docker save {tmp} | zstd -T0 -3 -q -c > {q(out)} && "
                      f"docker rmi {tmp} >/dev/null", timeout=LONG_TIMEOUT)
        size = out.stat().st_size
        out.unlink()
        return ms, size

    # -- import: from files made once; the sources are gone, so every layer really loads
    def prep_import(self):
        self.imp_envrig = self.root / "import-envrig.tar.zst"
        self.imp_raw = self.root / "import-raw.tar.zst"
        run(envrig(self.src, "export", "--snapshot", EXP, "-o", self.imp_envrig),
            timeout=LONG_TIMEOUT)
        sh_ok(f"docker save {RAW_REPO}:exp | zstd -T0 -3 -q -c > {q(self.imp_raw)}",
              timeout=LONG_TIMEOUT)
        src_env = status(self.src)["env_id"]
        run(envrig(self.src, "destroy", "-f"))
        left = docker_images(f"label=dev.envrig.env={src_env}")
        if left:
            self.notes.append(f"docker: `envrig destroy -f` left {len(left)} image(s) of its "
                              f"environment: {' '.join(i[7:19] for i in left)}")
            run(["docker", "rmi", "-f", *left], check=False)
        run(["docker", "rm", "-f", self.cid])
        self.cid = None
        raw = docker_images(f"label={RAW_LABEL}")
        if raw:
            run(["docker", "rmi", "-f", *raw], check=False)

    def import_envrig(self):
        self.seq += 1
        d = self.root / f"imp{self.seq:03d}"
        self.folders.append(d)
        try:
            ms = timed([str(ENVRIG), "import", str(self.imp_envrig), "-C", str(d)],
                       timeout=LONG_TIMEOUT)
            env = status(d)["env_id"]
            self.env_ids.add(env)
            dexec(self.envrig_cid(d), CHECK_PAYLOAD)
        finally:
            run(envrig(d, "destroy", "-f"), check=False)
        left = docker_images(f"label=dev.envrig.env={env}")
        # The loaded image keeps the labels of the environment it was exported from.
        left += [i for e in self.env_ids - {env} for i in docker_images(f"label=dev.envrig.env={e}")]
        if left:
            note = (f"docker: after `envrig import` + `destroy -f`, {len(set(left))} image(s) of "
                    f"the environment (or its loaded source) were left")
            if note not in self.notes:
                self.notes.append(note)
            run(["docker", "rmi", "-f", *set(left)], check=False)
        shutil.rmtree(d, ignore_errors=True)
        return ms

    def import_raw(self):
        try:
            return timed_sh(f"zstd -dc {q(self.imp_raw)} | docker load", timeout=LONG_TIMEOUT)
        finally:
            run(["docker", "rmi", "-f", f"{RAW_REPO}:exp"], check=False)

    def import_raw_run(self):
        name = f"{RAW_PREFIX}-imp"
        try:
            ms = timed_sh(f"zstd -dc {q(self.imp_raw)} | docker load >/dev/null && docker run -d "
                          f"--init --hostname m1 --label {q(RAW_LABEL)} --name {name} "
                          f"--entrypoint sleep {RAW_REPO}:exp infinity", timeout=LONG_TIMEOUT)
            dexec(name, CHECK_PAYLOAD)
            return ms
        finally:
            run(["docker", "rm", "-f", name], check=False)
            run(["docker", "rmi", "-f", f"{RAW_REPO}:exp"], check=False)

    def scenarios(self):
        """(key, label, kind, prep, envrig side, raw side, target, extras)."""
        return [
            ("docker-save", "docker: snapshot save", "time", None,
             self.save_envrig, self.save_raw, TARGET, []),
            ("docker-restore", "docker: snapshot restore", "time", self.prep_restore,
             self.restore_envrig, self.restore_raw, TARGET, []),
            ("docker-export-snap", "docker: export --snapshot", "tput", self.prep_export,
             self.export_snap_envrig, self.export_snap_raw, None, []),
            ("docker-export-now", "docker: export (now)", "tput", None,
             self.export_now_envrig, self.export_now_raw, None, []),
            ("docker-import", "docker: import", "tput", self.prep_import,
             self.import_envrig, self.import_raw, None,
             [("run", "  raw + docker run", self.import_raw_run)]),
        ]

    def close(self) -> list[str]:
        """Best effort, bounded: everything this suite made. Returns what is left."""
        for d in self.folders:
            if d.joinpath("Envfile").exists():
                run(envrig(d, "destroy", "-f"), check=False, timeout=300)
        ids = docker_ids(f"label={RAW_LABEL}")
        ids += [i for d in self.folders for i in docker_ids(f"label=dev.envrig.folder={d}")]
        if ids:
            run(["docker", "rm", "-f", *ids], check=False)
        imgs = docker_images(f"label={RAW_LABEL}") + docker_images(f"reference={RAW_REPO}")
        imgs += [i for e in self.env_ids for i in docker_images(f"label=dev.envrig.env={e}")]
        if imgs:
            run(["docker", "rmi", "-f", *set(imgs)], check=False)
        left = docker_ids(f"label={RAW_LABEL}")
        left += [i for d in self.folders for i in docker_ids(f"label=dev.envrig.folder={d}")]
        left += docker_images(f"label={RAW_LABEL}")
        left += [i for e in self.env_ids for i in docker_images(f"label=dev.envrig.env={e}")]
        return [f"docker:{x[:19]}" for x in left]


# --- the libvirt side -----------------------------------------------------------------------


def virsh(*args, check=True, timeout=bench.CMD_TIMEOUT):
    return run(VIRSH + list(args), check=check, timeout=timeout)


def agent(dom: str, cmd: dict, timeout=5):
    """One guest-agent command through virsh; its `return`, or None when it fails."""
    p = virsh("qemu-agent-command", dom, json.dumps(cmd), "--timeout", str(timeout),
              check=False, timeout=timeout + 15)
    if p.returncode != 0:
        return None
    try:
        return json.loads(p.stdout)["return"]
    except (ValueError, KeyError):
        return None


def agent_exec(dom: str, script: str, limit=120.0) -> tuple[int, str]:
    """Runs `sh -c SCRIPT` in the guest by its agent; (exit code, stdout). Bounded."""
    r = agent(dom, {"execute": "guest-exec", "arguments": {
        "path": "/bin/sh", "arg": ["-c", script], "capture-output": True}}, timeout=10)
    if not r or "pid" not in r:
        raise BenchError(f"{dom}: the guest agent did not start the command")
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        st = agent(dom, {"execute": "guest-exec-status", "arguments": {"pid": r["pid"]}})
        if st and st.get("exited"):
            out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
            return st.get("exitcode", -1), out
        time.sleep(0.1)
    raise BenchError(f"{dom}: the command did not finish within {limit:.0f} s")


def agent_check(dom: str, script: str, limit=120.0) -> str:
    code, out = agent_exec(dom, script, limit)
    if code != 0:
        raise BenchError(f"{dom}: `{script}` exited {code}: {out.strip()}")
    return out


def wait_agent(dom: str, limit=BOOT_WAIT, every=0.1):
    """Polls guest-ping until it answers (bounded); what the raw side waits for."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if agent(dom, {"execute": "guest-ping"}, timeout=2) is not None:
            return
        time.sleep(every)
    raise BenchError(f"{dom}: the guest agent did not answer within {limit:.0f} s")


def wait_ssh(port: int, key: Path, limit=BOOT_WAIT):
    """Polls `ssh root@127.0.0.1 true` with the guest's key (loopback only; bounded)."""
    cmd = ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
           "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR", "root@127.0.0.1", "true"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if run(cmd, check=False, timeout=15).returncode == 0:
            return
        time.sleep(0.1)
    raise BenchError(f"ssh to 127.0.0.1:{port} did not answer within {limit:.0f} s")


def domain_xml(name: str, kind: str, disk: Path, backing: Path | None, kernel_dir: Path,
               console: Path, ssh_port: int) -> str:
    """The raw domain: what envrig's xml.rs writes (direct kernel boot, passt, agent channel,
    virtio rng, no balloon), without envrig's metadata."""
    cmdline = (kernel_dir / "cmdline").read_text().strip() + " hostname=m1"
    back = ""
    if backing:
        back = f"""
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='{backing}'><seclabel model='dac' relabel='no'/></source>
        <backingStore/>
      </backingStore>"""
    return f"""<domain type='{kind}'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel_dir / 'vmlinuz'}</kernel>
    <initrd>{kernel_dir / 'initrd.img'}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>{back}
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <backend type='passt'/>
      <model type='virtio'/>
      <portForward proto='tcp' address='127.0.0.1'><range start='{ssh_port}' to='22'/></portForward>
    </interface>
    <serial type='file'><source path='{console}'/><target port='0'/></serial>
    <console type='file'><source path='{console}'/><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def raw_domains() -> list[str]:
    p = virsh("list", "--all", "--name", check=False)
    return [n for n in p.stdout.split() if n.startswith(RAW_PREFIX)]


def drop_domain(name: str):
    virsh("destroy", name, check=False)
    virsh("undefine", name, "--snapshots-metadata", check=False)


class LibvirtSuite:
    name = "libvirt"

    def __init__(self, root: Path, payload_mib: int):
        self.root = root / "libvirt"
        self.root.mkdir()
        self.payload_mib = payload_mib
        self.src = self.root / "env"
        self.guest = GUEST.resolve()
        self.folders: list[Path] = []
        self.envrig_domains: set[str] = set()
        self.raw = f"{RAW_PREFIX}-m1"
        self.raw_dir = self.root / "raw"
        self.state_bytes = 0
        self.seq = 0
        self.notes: list[str] = []

    def out(self, what: str) -> Path:
        self.seq += 1
        return self.root / f"{what}-{self.seq:03d}.tar.zst"

    def envrig_domain(self, d: Path) -> str:
        st = status(d)
        m = st["machines"][0]
        if m["state"] != "running":
            raise BenchError(f"{d}: machine m1 is {m['state']}")
        self.envrig_domains.add(m["resource_name"])
        return m["resource_name"]

    def setup(self):
        envfile(self.src, "\n".join([
            "[project]", 'name = "benchsnapvm"',
            "[boxes.tiny]", f'libvirt = "{self.guest}"',
            "[machines.m1]", 'box = "tiny"', 'provider = "libvirt"', 'memory = "256MiB"', ""]))
        self.folders.append(self.src)
        log("libvirt: envrig up (a TCG boot)")
        run(envrig(self.src, "up"), timeout=LONG_TIMEOUT)
        self.dom = self.envrig_domain(self.src)
        self.disk = LIBVIRT_IMAGES / self.dom / "disk.qcow2"
        if not self.disk.is_file():
            raise BenchError(f"envrig's disk {self.disk} is missing")
        dumped = virsh("dumpxml", self.dom).stdout
        self.kind = "kvm" if "type='kvm'" in dumped.split("\n", 1)[0] else "qemu"
        agent_check(self.dom, SET_MARKER)
        # The raw domain: an overlay on the test guest's disk, the same devices.
        self.raw_dir.mkdir()
        self.root.parent.chmod(0o755)  # libvirt-qemu must reach the overlay
        self.root.chmod(0o755)
        self.raw_dir.chmod(0o755)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
             str(self.guest / "disk.qcow2"), str(self.raw_dir / "disk.qcow2")])
        self.ssh_port = free_port()
        xml = self.raw_dir / "domain.xml"
        xml.write_text(domain_xml(self.raw, self.kind, self.raw_dir / "disk.qcow2",
                                  self.guest / "disk.qcow2", self.guest,
                                  self.raw_dir / "console.log", self.ssh_port))
        log("libvirt: raw domain define + start (a TCG boot)")
        virsh("define", str(xml))
        virsh("start", self.raw)
        wait_agent(self.raw)
        agent_check(self.raw, SET_MARKER)

    # -- snapshot save: the previous snapshot of the name is deleted first, untimed
    def save_envrig(self) -> float:
        run(envrig(self.src, "snapshot", "delete", SNAP), check=False)
        ms = timed(envrig(self.src, "snapshot", "save", SNAP, "--force"))
        if SNAP not in virsh("snapshot-list", self.dom, "--name").stdout.split():
            raise BenchError("envrig snapshot save: no libvirt snapshot")
        return ms

    def save_raw(self) -> float:
        virsh("snapshot-delete", self.raw, SNAP, check=False)
        ms = timed(VIRSH + ["snapshot-create-as", self.raw, SNAP])
        if SNAP not in virsh("snapshot-list", self.raw, "--name").stdout.split():
            raise BenchError("virsh snapshot-create-as: no snapshot")
        return ms

    def prep_restore(self):
        if SNAP not in virsh("snapshot-list", self.dom, "--name").stdout.split():
            run(envrig(self.src, "snapshot", "save", SNAP, "--force"))
        if SNAP not in virsh("snapshot-list", self.raw, "--name").stdout.split():
            virsh("snapshot-create-as", self.raw, SNAP)

    # -- snapshot restore: the marker is removed first (untimed) and must be back after
    def restore_envrig(self) -> float:
        agent_check(self.dom, DROP_MARKER)
        ms = timed(envrig(self.src, "snapshot", "restore", SNAP), timeout=LONG_TIMEOUT)
        got = agent_check(self.dom, "cat /root/marker").strip()
        if got != MARKER:
            raise BenchError(f"envrig snapshot restore: marker is {got!r}")
        return ms

    def _revert(self, ssh: bool) -> float:
        agent_check(self.raw, DROP_MARKER)
        t0 = time.perf_counter()
        virsh("snapshot-revert", self.raw, SNAP, "--running", timeout=LONG_TIMEOUT)
        wait_agent(self.raw)
        if ssh:
            wait_ssh(self.ssh_port, self.guest / "insecure_key")
        ms = (time.perf_counter() - t0) * 1000.0
        got = agent_check(self.raw, "cat /root/marker").strip()
        if got != MARKER:
            raise BenchError(f"raw revert: marker is {got!r}")
        return ms

    def restore_raw(self) -> float:
        return self._revert(ssh=False)

    def restore_raw_ssh(self) -> float:
        return self._revert(ssh=True)

    # -- export
    def raw_export_script(self, snapshot: str, out: Path) -> str:
        work = self.root / "flat"
        return (f"rm -rf {q(work)} && mkdir {q(work)} && "
                f"qemu-img convert -U -O qcow2 -l snapshot.name={snapshot} "
                f"{q(self.raw_dir / 'disk.qcow2')} {q(work / 'disk.qcow2')} && "
                f"tar -cf - -C {q(work)} disk.qcow2 -C {q(self.guest)} vmlinuz initrd.img cmdline"
                f" | zstd -T0 -3 -q -c > {q(out)} && rm -rf {q(work)}")

    def prep_export(self):
        log(f"libvirt: writing the {self.payload_mib} MiB payload in both guests")
        script = payload_script(self.payload_mib)
        agent_check(self.dom, script, limit=600)
        agent_check(self.raw, script, limit=600)
        run(envrig(self.src, "snapshot", "save", EXP, "--force"))
        virsh("snapshot-delete", self.raw, EXP, check=False)
        virsh("snapshot-create-as", self.raw, EXP)
        flat = self.root / "measure.qcow2"
        run(["qemu-img", "convert", "-U", "-O", "qcow2", "-l", f"snapshot.name={EXP}",
             str(self.raw_dir / "disk.qcow2"), str(flat)], timeout=LONG_TIMEOUT)
        disk = flat.stat().st_size
        flat.unlink()
        kernel = sum((self.guest / f).stat().st_size for f in ("vmlinuz", "initrd.img", "cmdline"))
        self.state_bytes = disk + kernel
        log(f"libvirt: machine state (flattened disk {disk / MB:.1f} MB + kernel files "
            f"{kernel / MB:.1f} MB) {self.state_bytes / MB:.1f} MB")

    def export_snap_envrig(self):
        out = self.out("e-snap")
        ms = timed(envrig(self.src, "export", "--snapshot", EXP, "-o", out), timeout=LONG_TIMEOUT)
        size = out.stat().st_size
        out.unlink()
        return ms, size

    def export_snap_raw(self):
        out = self.out("r-snap")
        ms = timed_sh(self.raw_export_script(EXP, out), timeout=LONG_TIMEOUT)
        size = out.stat().st_size
        out.unlink()
        return ms, size

    def export_now_envrig(self):
        out = self.out("e-now")
        ms = timed(envrig(self.src, "export", "-o", out), timeout=LONG_TIMEOUT)
        size = out.stat().st_size
        out.unlink()
        left = [n for n in virsh("snapshot-list", self.dom, "--name").stdout.split()
                if n.startswith("export-")]
        if left:
            raise BenchError(f"envrig export left its temporary snapshot {left}")
        return ms, size

    def export_now_raw(self):
        out = self.out("r-now")
        v = " ".join(map(q, VIRSH))
        ms = timed_sh(f"{v} snapshot-create-as {self.raw} tmpexp >/dev/null && "
                      + self.raw_export_script("tmpexp", out)
                      + f" && {v} snapshot-delete {self.raw} tmpexp >/dev/null",
                      timeout=LONG_TIMEOUT)
        virsh("snapshot-delete", self.raw, "tmpexp", check=False)
        size = out.stat().st_size
        out.unlink()
        return ms, size

    # -- import: from files made once; the sources are gone (and their CPU is free)
    def prep_import(self):
        self.imp_envrig = self.root / "import-envrig.tar.zst"
        self.imp_raw = self.root / "import-raw.tar.zst"
        run(envrig(self.src, "export", "--snapshot", EXP, "-o", self.imp_envrig),
            timeout=LONG_TIMEOUT)
        sh_ok(self.raw_export_script(EXP, self.imp_raw), timeout=LONG_TIMEOUT)
        run(envrig(self.src, "destroy", "-f"), timeout=300)
        drop_domain(self.raw)
        shutil.rmtree(self.raw_dir, ignore_errors=True)

    def import_envrig(self):
        self.seq += 1
        d = self.root / f"imp{self.seq:03d}"
        self.folders.append(d)
        try:
            ms = timed([str(ENVRIG), "import", str(self.imp_envrig), "-C", str(d)],
                       timeout=LONG_TIMEOUT)
            dom = self.envrig_domain(d)
            got = agent_check(dom, CHECK_PAYLOAD).strip()
            if got != MARKER:
                raise BenchError(f"envrig import: marker is {got!r}")
        finally:
            run(envrig(d, "destroy", "-f"), check=False, timeout=300)
        shutil.rmtree(d, ignore_errors=True)
        return ms

    def import_raw(self):
        work = self.root / "unpacked"
        try:
            ms = timed_sh(f"mkdir {q(work)} && zstd -dc {q(self.imp_raw)} | tar -x -C {q(work)}",
                          timeout=LONG_TIMEOUT)
            if not (work / "disk.qcow2").is_file():
                raise BenchError("raw import: no disk.qcow2 unpacked")
            return ms
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def import_raw_boot(self):
        """Unpack, define a domain on the unpacked disk (no backing file) and start it; done
        when its agent answers. The timed part is one script plus the agent polling."""
        work = self.root / "imported"
        name = f"{RAW_PREFIX}-imp"
        xml = self.root / "imported.xml"
        port = free_port()
        v = " ".join(map(q, VIRSH))
        try:
            t0 = time.perf_counter()
            sh_ok(f"mkdir {q(work)} && chmod 755 {q(work)} && zstd -dc {q(self.imp_raw)} | "
                  f"tar -x -C {q(work)}", timeout=LONG_TIMEOUT)
            xml.write_text(domain_xml(name, self.kind, work / "disk.qcow2", None, work,
                                      work / "console.log", port))
            sh_ok(f"{v} define {q(xml)} >/dev/null && {v} start {name} >/dev/null")
            wait_agent(name)
            ms = (time.perf_counter() - t0) * 1000.0
            got = agent_check(name, CHECK_PAYLOAD).strip()
            if got != MARKER:
                raise BenchError(f"raw import: marker is {got!r}")
            return ms
        finally:
            drop_domain(name)
            shutil.rmtree(work, ignore_errors=True)

    def scenarios(self):
        return [
            ("libvirt-save", "libvirt: snapshot save", "time", None,
             self.save_envrig, self.save_raw, TARGET, []),
            ("libvirt-restore", "libvirt: snapshot restore", "time", self.prep_restore,
             self.restore_envrig, self.restore_raw, TARGET,
             [("ssh", "  raw + ssh answers", self.restore_raw_ssh)]),
            ("libvirt-export-snap", "libvirt: export --snapshot", "tput", self.prep_export,
             self.export_snap_envrig, self.export_snap_raw, None, []),
            ("libvirt-export-now", "libvirt: export (now)", "tput", None,
             self.export_now_envrig, self.export_now_raw, None, []),
            ("libvirt-import", "libvirt: import", "tput", self.prep_import,
             self.import_envrig, self.import_raw, None,
             [("boot", "  raw + define, start, agent", self.import_raw_boot)]),
        ]

    def close(self) -> list[str]:
        for d in self.folders:
            if d.joinpath("Envfile").exists():
                run(envrig(d, "destroy", "-f"), check=False, timeout=300)
        for n in raw_domains():
            drop_domain(n)
        every = set(virsh("list", "--all", "--name", check=False).stdout.split())
        left = [f"domain:{n}" for n in raw_domains()]
        left += [f"domain:{n}" for n in self.envrig_domains & every]
        left += [f"dir:{LIBVIRT_IMAGES / n}" for n in self.envrig_domains
                 if (LIBVIRT_IMAGES / n).exists()]
        return left


# --- measuring and the report ---------------------------------------------------------------


def measure(sides, runs: int, warmup: int, deadline: float):
    """Like bench.measure (one round runs every side, the first one rotating; warm-up rounds
    unrecorded), bounded by `deadline` (time.monotonic()). A side returns ms or (ms, bytes).
    Returns (samples per side, bytes per side)."""
    live = [(k, fn) for k, fn in enumerate(sides) if fn is not None]
    ms_out = [[] for _ in sides]
    size_out = [[] for _ in sides]
    for i in range(warmup + runs):
        if time.monotonic() > deadline:
            raise BenchError("the time budget (--max-minutes) is spent")
        s = i % len(live)
        for k, fn in live[s:] + live[:s]:
            r = fn()
            ms, size = r if isinstance(r, tuple) else (r, None)
            if i >= warmup:
                ms_out[k].append(ms)
                if size is not None:
                    size_out[k].append(size)
    return ms_out, size_out


def mb_s(state_bytes: int, ms: float) -> float:
    return state_bytes / MB / (ms / 1000.0)


def evaluate_tput(name, label, state_bytes, e, r, e_sizes, r_sizes, extras):
    em, rm = statistics.median(e), statistics.median(r)
    fmb = lambda xs: round(statistics.median(xs) / MB, 2) if xs else None  # noqa: E731
    return {
        "scenario": name,
        "label": label,
        "state_bytes": state_bytes,
        "envrig_ms": e,
        "raw_ms": r,
        "envrig_median_ms": round(em, 1),
        "raw_median_ms": round(rm, 1),
        "ratio": round(em / rm, 3),
        "envrig_mb_s": round(mb_s(state_bytes, em), 1),
        "raw_mb_s": round(mb_s(state_bytes, rm), 1),
        "envrig_file_mb": fmb(e_sizes),
        "raw_file_mb": fmb(r_sizes),
        "raw_variants": [
            {"variant": key, "label": xl, "raw_ms": xs,
             "raw_median_ms": round(statistics.median(xs), 1),
             "raw_mb_s": round(mb_s(state_bytes, statistics.median(xs)), 1),
             "ratio": round(em / statistics.median(xs), 3)}
            for key, xl, xs in extras
        ],
    }


def print_tput(results):
    hdr = ("scenario", "state MB", "envrig s", "envrig MB/s", "envrig file MB", "raw s",
           "raw MB/s", "raw file MB", "ratio")
    rows = []
    f = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
    for r in results:
        rows.append((r["label"], f"{r['state_bytes'] / MB:.1f}",
                     f"{r['envrig_median_ms'] / 1000:.2f}", f(r["envrig_mb_s"]),
                     f(r["envrig_file_mb"]), f"{r['raw_median_ms'] / 1000:.2f}",
                     f(r["raw_mb_s"]), f(r["raw_file_mb"]), f"{r['ratio']:.2f}x"))
        for v in r["raw_variants"]:
            rows.append((v["label"], "", "", "", "", f"{v['raw_median_ms'] / 1000:.2f}",
                         f(v["raw_mb_s"]), "", f"{v['ratio']:.2f}x"))
    w = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(cells))
    print(line(hdr))
    print("  ".join("-" * x for x in w))
    for row in rows:
        print(line(row))


def print_samples(results):
    print("\nsamples (ms, in run order):")
    fmt = lambda xs: " ".join(f"{x:.0f}" for x in xs)  # noqa: E731
    for res in results:
        s = f"  {res['scenario']:<20} envrig: {fmt(res['envrig_ms'])}"
        if res["raw_ms"]:
            s += f"  | raw: {fmt(res['raw_ms'])}"
        for v in res["raw_variants"]:
            s += f"  | raw+{v['variant']}: {fmt(v['raw_ms'])}"
        print(s)


# --- preparing the host ---------------------------------------------------------------------


def libvirt_answers() -> bool:
    try:
        return subprocess.run(VIRSH + ["version"], capture_output=True, timeout=20,
                              env=CHILD_ENV).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def prepare(providers: list[str]):
    missing = [t for t in ("zstd", "tar", "bash") if not shutil.which(t)]
    if "libvirt" in providers:
        missing += [t for t in ("virsh", "qemu-img", "ssh") if not shutil.which(t)]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}")
    bench.ENVRIG = ENVRIG
    if "docker" in providers:
        bench.prepare(log)  # docker up, test image present, envrig built when missing
    elif not ENVRIG.exists():
        bench.prepare(log)
    if "libvirt" in providers and (not libvirt_answers() or not (GUEST / "disk.qcow2").is_file()):
        log("libvirtd does not answer (or the test guest is missing): running host-setup.sh")
        subprocess.run(["bash", str(bench.HOST_SETUP)], check=True, timeout=1800)
        if not libvirt_answers() or not (GUEST / "disk.qcow2").is_file():
            raise BenchError("libvirt or the test guest still missing after host-setup.sh")


def main(argv=None) -> int:
    global ENVRIG
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5,
                    help=f"recorded runs per scenario and side ({MIN_RUNS}..{MAX_RUNS}; "
                         "default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded runs before (default 1)")
    ap.add_argument("--only", action="append", choices=["docker", "libvirt"],
                    help="measure this provider only (repeatable; default both)")
    ap.add_argument("--payload-mib", type=int, default=64,
                    help="MiB written into each machine before export/import (default 64)")
    ap.add_argument("--max-minutes", type=float, default=60.0,
                    help="time budget of the whole run; past it the run stops (default 60)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    ap.add_argument("--envrig", metavar="PATH",
                    help="the envrig binary (default target/release/envrig; never built "
                         "when given)")
    args = ap.parse_args(argv)
    if not MIN_RUNS <= args.runs <= MAX_RUNS:
        ap.error(f"--runs must be between {MIN_RUNS} and {MAX_RUNS}")
    if not 0 <= args.warmup <= 5:
        ap.error("--warmup must be between 0 and 5")
    if not 2 <= args.payload_mib <= 1024:
        ap.error("--payload-mib must be between 2 and 1024")
    if args.envrig:
        ENVRIG = Path(args.envrig).resolve()
        if not os.access(ENVRIG, os.X_OK):
            ap.error(f"--envrig: {ENVRIG} is not an executable file")
    providers = args.only or ["docker", "libvirt"]
    providers = [p for p in ("docker", "libvirt") if p in providers]

    try:
        prepare(providers)
    except (BenchError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log(f"cannot prepare: {e}")
        return 2
    info = bench.host_info()
    info["envrig_version"] = run([str(ENVRIG), "--version"], check=False).stdout.strip()
    if "libvirt" in providers:
        info["libvirt"] = virsh("version", check=False).stdout.strip().replace("\n", "; ")
        info["guest"] = str(GUEST.resolve())
    log(f"{info['envrig_version']} ({info['git_commit']}), docker {info['docker_server']}, "
        f"{info['cpus']} CPUs; {args.runs} runs (+{args.warmup} warm-up) per side; "
        f"token {TOKEN}")

    started = time.monotonic()
    deadline = started + args.max_minutes * 60
    root = Path(tempfile.mkdtemp(prefix="envrig-bench-snap-")).resolve()
    timings, tputs, notes, left = [], [], [], []
    failed_run = None
    try:
        for pname in providers:
            suite = (DockerSuite if pname == "docker" else LibvirtSuite)(root, args.payload_mib)
            try:
                t0 = time.monotonic()
                suite.setup()
                log(f"{pname}: set up in {time.monotonic() - t0:.0f} s")
                for name, label, kind, prep, fe, fr, target, extras in suite.scenarios():
                    t0 = time.monotonic()
                    if prep:
                        prep()
                    (e, r, *xs), (es, rs, *_) = measure(
                        [fe, fr, *(fn for _, _, fn in extras)], args.runs, args.warmup,
                        deadline)
                    named = [(k, lb, x) for (k, lb, _), x in zip(extras, xs)]
                    if kind == "time":
                        timings.append(bench.evaluate(name, label, e, r, target, named))
                    else:
                        tputs.append(evaluate_tput(name, label, suite.state_bytes, e, r, es, rs,
                                                   named))
                    log(f"{name}: done in {time.monotonic() - t0:.0f} s")
            finally:
                notes += suite.notes
                left += suite.close()
    except BenchError as e:
        failed_run = str(e)
        log(f"error: {e}")
    except Exception as e:  # a bug of this script: report it, after cleaning up
        failed_run = f"{type(e).__name__}: {e}"
        log(f"error: {traceback.format_exc()}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if left:
            log(f"WARNING: {len(left)} resources could not be removed: {' '.join(left)}")

    if timings:
        print()
        bench.print_table(timings)
    if tputs:
        print(f"\nthroughput: MB/s = machine state (MB, 10^6 bytes) / median seconds; "
              f"ratio = envrig / raw time")
        print_tput(tputs)
    if timings or tputs:
        print_samples(timings + tputs)
    for n in notes:
        print(f"note: {n}")
    failed = [res["scenario"] for res in timings if res["result"] == "FAIL"]
    print(f"\n{len(failed)} target(s) missed" + (f": {', '.join(failed)}" if failed else "")
          + f"; total {time.monotonic() - started:.0f} s")

    if args.json:
        doc = {
            "runs": args.runs,
            "warmup": args.warmup,
            "payload_mib": args.payload_mib,
            "image": IMAGE,
            "host": info,
            "envrig_binary": str(ENVRIG),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "results": timings,
            "throughput": tputs,
            "notes": notes,
            "left_behind": left,
            "error": failed_run,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    if failed_run:
        return 2
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
