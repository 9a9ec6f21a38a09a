#!/usr/bin/env python3
"""bench_vm.py: envrig's libvirt provider, measured against raw libvirt.

Scenarios (medians of N runs after a warm-up, sides interleaved; see bench/README.md):

  box-add      `envrig box add` of the small test guest (a box folder) and of the same guest
               packed as a gzip vagrant-libvirt .box: time and MB/s.
  up-vm        `envrig up` of one libvirt machine until envrig returns (guest agent answered,
               the environment's key installed, SSH took it) vs raw: `qemu-img create` of an
               overlay + `virsh create` of the same domain XML + waiting for the SSH banner
               on the forwarded port. Target <= 1.1x.
  overlay      the overlay creation inside `envrig up` (its debug log) for a box of 266 MB
               and of 2 GB of data: must be flat (the ratio 2 GB / 266 MB near 1).

    python3 bench/bench_vm.py --runs 5
    python3 bench/bench_vm.py --only up-vm --envrig target/release/envrig --json out.json

Python 3 standard library only. Every raw domain and file carries this run's token and is
removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

REPO = Path(__file__).resolve().parent.parent
GUEST = Path(os.environ.get("ENVRIG_TEST_GUEST", "/var/cache/envrig-test/guests/small-latest"))
IMAGES = Path(f"/var/lib/libvirt/images/envrig-bench-vm-{os.getpid()}")
TOKEN = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
CMD_TIMEOUT = 300
BOOT_TIMEOUT = 180
ENV = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "ENVRIG_FILE", "ENVRIG_PROVIDER")}
ENV["NO_COLOR"] = "1"


class BenchError(Exception):
    pass


def run(cmd, cwd=None, env=None, check=True, timeout=CMD_TIMEOUT):
    try:
        p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or ENV, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout} s: {' '.join(map(str, cmd))}")
    if check and p.returncode != 0:
        raise BenchError(f"failed ({p.returncode}): {' '.join(map(str, cmd))}\n{p.stderr[-2000:]}")
    return p


def timed(cmd, cwd=None, env=None):
    t0 = time.perf_counter()
    p = run(cmd, cwd=cwd, env=env)
    return (time.perf_counter() - t0) * 1000.0, p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ssh_banner(port: int, limit: float) -> None:
    """Waits until the guest's SSH server speaks on 127.0.0.1:port. passt accepts at once and
    forwards only once the guest listens, and the guest answers only after the client spoke:
    send an identification line first, with short timeouts."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.settimeout(0.7)
                s.sendall(b"SSH-2.0-probe\r\n")
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"no SSH banner on port {port} within {limit} s")


# --- raw libvirt --------------------------------------------------------------------------


def raw_xml(name: str, disk: Path, backing: Path, console: Path, port: int) -> str:
    """The domain envrig makes (see providers/libvirt/src/xml.rs), without its metadata."""
    cmdline = (GUEST / "cmdline").read_text().strip() + " hostname=vm"
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(GUEST_STAGED / 'vmlinuz'))}</kernel>
    <initrd>{escape(str(GUEST_STAGED / 'initrd.img'))}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file={quoteattr(str(disk))}/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file={quoteattr(str(backing))}><seclabel model='dac' relabel='no'/></source>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <backend type='passt'/>
      <model type='virtio'/>
      <portForward proto='tcp' address='127.0.0.1'><range start='{port}' to='22'/></portForward>
    </interface>
    <serial type='file'><source path={quoteattr(str(console))}/><target port='0'/></serial>
    <console type='file'><source path={quoteattr(str(console))}/><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
"""


GUEST_STAGED = IMAGES / "box"


def stage_guest():
    """The box where the system daemon's QEMU can read it (as envrig stages boxes)."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    GUEST_STAGED.mkdir(exist_ok=True)
    for f in ("disk.qcow2", "vmlinuz", "initrd.img", "cmdline"):
        if not (GUEST_STAGED / f).exists():
            shutil.copy(GUEST / f, GUEST_STAGED / f)


def ssh_login(port: int, limit: float) -> None:
    """Waits until `ssh -i BOX_KEY root@127.0.0.1 -p PORT true` succeeds (what a user of
    raw libvirt does to wait for a machine)."""
    key = GUEST / "insecure_key"
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        p = subprocess.run(
            ["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ConnectTimeout=2", "-o", "LogLevel=ERROR", "-p", str(port),
             "root@127.0.0.1", "true"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        if p.returncode == 0:
            return
        time.sleep(0.1)
    raise BenchError(f"no SSH login on port {port} within {limit} s")


def raw_up(i: int, login: bool = False) -> float:
    name = f"envrig-bench-{TOKEN}-{i}"
    d = IMAGES / name
    d.mkdir(parents=True, exist_ok=True)
    disk, console, port = d / "disk.qcow2", d / "console.log", free_port()
    xml = d / "domain.xml"
    xml.write_text(raw_xml(name, disk, GUEST_STAGED / "disk.qcow2", console, port))
    t0 = time.perf_counter()
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
         GUEST_STAGED / "disk.qcow2", disk])
    run(["virsh", "-c", "qemu:///system", "create", xml])
    (ssh_login if login else ssh_banner)(port, BOOT_TIMEOUT)
    ms = (time.perf_counter() - t0) * 1000.0
    run(["virsh", "-c", "qemu:///system", "destroy", name], check=False)
    shutil.rmtree(d, ignore_errors=True)
    return ms


def raw_cleanup():
    p = run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], check=False)
    for name in p.stdout.split():
        if TOKEN in name:
            run(["virsh", "-c", "qemu:///system", "destroy", name], check=False)
            run(["virsh", "-c", "qemu:///system", "undefine", name, "--snapshots-metadata"],
                check=False)
    shutil.rmtree(IMAGES, ignore_errors=True)


# --- envrig -------------------------------------------------------------------------------


class Envrig:
    def __init__(self, binary: Path, home: Path):
        self.binary, self.home = binary, home
        self.env = dict(ENV, ENVRIG_HOME=str(home))
        self.dirs = []

    def project(self, box: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=f"envrig-bench-{TOKEN}-"))
        (d / "Envfile").write_text(
            f'[project]\nname = "bench-vm"\n[boxes.b]\nlibvirt = "{box}"\n'
            f'[machines.vm]\nbox = "b"\nprovider = "libvirt"\nmemory = "256MiB"\n'
        )
        self.dirs.append(d)
        return d

    def up(self, d: Path, debug=False):
        env = dict(self.env, RUST_LOG="envrig_provider_libvirt=debug") if debug else self.env
        return timed([self.binary, "up"], cwd=d, env=env)

    def destroy(self, d: Path):
        run([self.binary, "destroy", "-f"], cwd=d, env=self.env, check=False)

    def cleanup(self):
        for d in self.dirs:
            if (d / "Envfile").exists():
                self.destroy(d)
            shutil.rmtree(d, ignore_errors=True)


def overlay_us(stderr: str) -> float:
    m = re.search(r"overlay_us=(\d+)", stderr)
    if not m:
        raise BenchError("envrig's debug log has no overlay_us (an older binary?)")
    return int(m.group(1)) / 1000.0


# --- scenarios ----------------------------------------------------------------------------


def bench_box_add(ev: Envrig, runs: int, work: Path):
    boxfile = work / "small.box"
    pack = work / "pack"
    pack.mkdir()
    for src, dst in (("disk.qcow2", "box.img"), ("vmlinuz", "vmlinuz"),
                     ("initrd.img", "initrd.img"), ("cmdline", "cmdline")):
        shutil.copy(GUEST / src, pack / dst)
    (pack / "metadata.json").write_text('{"provider":"libvirt","format":"qcow2","virtual_size":1}')
    run(["tar", "-czf", boxfile, "-C", pack, "metadata.json", "box.img", "vmlinuz",
         "initrd.img", "cmdline"])
    size_mb = sum((GUEST / f).stat().st_size for f in ("disk.qcow2", "vmlinuz", "initrd.img")) / 1e6
    rows = []
    for label, src in (("box folder", GUEST), ("gzip .box", boxfile)):
        samples = []
        for i in range(runs + 1):
            ms, _ = timed([ev.binary, "box", "add", f"bench-{i}", src, "--force"], env=ev.env)
            run([ev.binary, "box", "remove", f"bench-{i}"], env=ev.env, check=False)
            if i > 0:
                samples.append(ms)
        med = statistics.median(samples)
        rows.append({"scenario": f"box-add ({label})", "envrig_ms": med,
                     "mb_per_s": size_mb / (med / 1000.0), "size_mb": size_mb,
                     "samples": samples})
    return rows


def bench_up(ev: Envrig, runs: int):
    d = ev.project(str(GUEST))
    e, r, rl = [], [], []
    for i in range(runs + 1):
        # Interleaved, rotating which goes first.
        sides = ["envrig", "raw", "login"]
        k = i % 3
        for side in sides[k:] + sides[:k]:
            if side == "envrig":
                ms, _ = ev.up(d)
                ev.destroy(d)
                if i > 0:
                    e.append(ms)
            elif side == "raw":
                ms = raw_up(i)
                if i > 0:
                    r.append(ms)
            else:
                ms = raw_up(100 + i, login=True)
                if i > 0:
                    rl.append(ms)
    em, rm, lm = statistics.median(e), statistics.median(r), statistics.median(rl)
    return [
        {"scenario": "up-vm vs raw + SSH login", "envrig_ms": em, "raw_ms": lm,
         "ratio": em / lm, "target": 1.1, "pass": em / lm <= 1.1,
         "envrig_samples": e, "raw_samples": rl},
        {"scenario": "up-vm vs raw + SSH banner", "envrig_ms": em, "raw_ms": rm,
         "ratio": em / rm, "envrig_samples": e, "raw_samples": r},
    ]


def make_big_box(work: Path, name: str, data_mb: int) -> Path:
    """The small guest's disk followed by `data_mb` MB of random data beyond its file
    system: a box that still boots, holding that much data."""
    raw = work / f"{name}.raw"
    run(["qemu-img", "convert", "-O", "raw", GUEST / "disk.qcow2", raw])
    fs_mb = raw.stat().st_size // (1 << 20)
    run(["truncate", "-s", f"{fs_mb + data_mb}M", raw])
    run(["dd", "if=/dev/urandom", f"of={raw}", "bs=1M", f"seek={fs_mb}",
         f"count={data_mb}", "conv=notrunc", "status=none"], timeout=600)
    box = work / name
    box.mkdir()
    run(["qemu-img", "convert", "-O", "qcow2", raw, box / "disk.qcow2"], timeout=600)
    raw.unlink()
    for f in ("vmlinuz", "initrd.img", "cmdline"):
        shutil.copy(GUEST / f, box / f)
    return box


def bench_overlay(ev: Envrig, runs: int, work: Path):
    rows, meds = [], {}
    for label, mb in (("266 MB", 266), ("2 GB", 2048)):
        box = make_big_box(work, f"big-{mb}", mb)
        actual = (box / "disk.qcow2").stat().st_size / 1e6
        d = ev.project(str(box))
        samples = []
        for i in range(runs + 1):
            _, p = ev.up(d, debug=True)
            ev.destroy(d)
            if i > 0:
                samples.append(overlay_us(p.stderr))
        meds[mb] = statistics.median(samples)
        rows.append({"scenario": f"overlay ({label} box, {actual:.0f} MB on disk)",
                     "envrig_ms": meds[mb], "samples": samples})
    ratio = meds[2048] / meds[266]
    rows.append({"scenario": "overlay 2 GB / 266 MB", "ratio": ratio, "target": 1.5,
                 "pass": ratio <= 1.5})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", action="append", choices=["box-add", "up-vm", "overlay"])
    ap.add_argument("--envrig", default=str(REPO / "target" / "release" / "envrig"))
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    if args.runs < 5:
        ap.error("--runs must be at least 5 (the targets are medians of >= 5 runs)")
    binary = Path(args.envrig)
    if not binary.is_file():
        ap.error(f"{binary} is missing: `cargo build --release` first")
    if not (GUEST / "disk.qcow2").is_file():
        ap.error(f"{GUEST} is missing: run scripts/host-setup.sh")
    only = set(args.only or ["box-add", "up-vm", "overlay"])
    work = Path(tempfile.mkdtemp(prefix=f"envrig-bench-{TOKEN}-work-"))
    ev = Envrig(binary, work / "home")
    rows = []
    try:
        stage_guest()
        # The first machine of a host probes KVM once; keep that out of the samples.
        d = ev.project(str(GUEST))
        ev.up(d)
        ev.destroy(d)
        if "box-add" in only:
            rows += bench_box_add(ev, args.runs, work)
        if "up-vm" in only:
            rows += bench_up(ev, args.runs)
        if "overlay" in only:
            rows += bench_overlay(ev, args.runs, work)
    finally:
        ev.cleanup()
        raw_cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'scenario':44} {'envrig':>10} {'raw':>10} {'ratio':>7} {'target':>7}  result")
    for r in rows:
        e = f"{r['envrig_ms']:.0f} ms" if "envrig_ms" in r else ""
        if "mb_per_s" in r:
            e = f"{r['envrig_ms']:.0f} ms"
        raw = f"{r['raw_ms']:.0f} ms" if "raw_ms" in r else ""
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        target = f"<={r['target']}x" if "target" in r else ""
        res = ("PASS" if r["pass"] else "FAIL") if "pass" in r else (
            f"{r['mb_per_s']:.0f} MB/s" if "mb_per_s" in r else "")
        print(f"{r['scenario']:44} {e:>10} {raw:>10} {ratio:>7} {target:>7}  {res}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": args.runs, "rows": rows}, indent=2))
    return 1 if args.check and any(r.get("pass") is False for r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench_vm: {e}", file=sys.stderr)
        sys.exit(2)
