#!/usr/bin/env python3
"""faults.py: SIGKILL envrig at random moments of every mutating command, then check that
nothing is left half-made.

Each round starts from nothing, prepares what the command needs, starts the command and
kills it (SIGKILL) after a random delay drawn from [0, the command's measured duration).
Then:

  1. nothing is corrupt: every snapshot `snapshot list` shows is whole (all the machines
     its save took) and restorable; an export file is absent or complete and verifiable
     (manifest first, every member of its declared size and sha256, nothing else; and
     `envrig import --dry-run` when this envrig has it);
  2. `up` converges (a killed import is retried first when it left no Envfile): exit 0,
     every machine running, the first machine's `once` step ran;
  3. `destroy -f` and `gc` leave nothing: no container, image, network or volume with the
     project's folder label; no libvirt domain or network of the project; nothing in the
     libvirt images folder but staged boxes; no work file (`*.work-PID-START`) or other
     stray file under `$ENVRIG_HOME` and the project's `.envrig/`; nothing beside the
     export file.

Docker: up, provision, snapshot save, snapshot restore, export, import and destroy, with
baking on and off (3 busybox machines). libvirt: the same commands with one machine of
the small test guest (scripts/build-test-guest.sh).

    python3 bench/faults.py                       # 150 Docker kills, 50 libvirt kills
    python3 bench/faults.py --docker 14 --libvirt 0 --seed 7
    python3 bench/faults.py --json /tmp/faults.json --minutes 60

Python 3 standard library only (and the `zstd` CLI to verify export files). Everything
runs in a fresh folder with its own ENVRIG_HOME, libvirt images folder and gc scope, and
is removed at the end, also on failure or Ctrl-C. Exit 0: no leftover, nothing corrupt,
every `up` converged; 1: a check failed; 2: the benchmark could not run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_IMAGE = "envrig-test/busybox:latest"
GUEST = Path(os.environ.get("ENVRIG_TEST_GUEST", "/var/cache/envrig-test/guests/small-latest"))
TOKEN = f"{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
CMD_TIMEOUT = 300
COMMANDS = ["up", "provision", "snapshot-save", "snapshot-restore", "export", "import", "destroy"]
# Entries a project's `.envrig/` may hold after `destroy` (everything else is a leftover).
ENVRIG_OK = {".gitignore", "lock", "state.json", "instances"}


def processes_naming(path: Path) -> list[str]:
    """Living processes (not zombies) whose command line names path: the KVM probe's QEMU
    of a killed envrig once stayed, spinning, for good."""
    needle = str(path)
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(") ", 1)[1][:1]
        except (OSError, IndexError):
            continue
        if needle in cmd and state not in ("Z", "X"):
            out.append(f"{d.name}: {cmd.strip()[:200]}")
    return out


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd, cwd=None, env=None, check=False, timeout=CMD_TIMEOUT):
    try:
        return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout} s: {' '.join(map(str, cmd))}")


def lines(cmd) -> list[str]:
    p = run(cmd)
    return [l for l in p.stdout.splitlines() if l.strip()] if p.returncode == 0 else []


def verify_archive(path: Path) -> str | None:
    """None when `path` is a complete export (manifest first, every member of its declared
    size and checksum, nothing more, nothing missing); else why not."""
    z = subprocess.Popen(["zstd", "-dcq", str(path)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        tf = tarfile.open(fileobj=z.stdout, mode="r|")
        first = tf.next()
        if first is None or first.name != "manifest.json":
            return "does not start with manifest.json"
        manifest = json.load(tf.extractfile(first))
        declared = {m["path"]: m for m in manifest["members"]}
        seen = set()
        while (ti := tf.next()) is not None:
            m = declared.get(ti.name)
            if m is None or ti.name in seen or not ti.isfile():
                return f"unexpected member {ti.name}"
            seen.add(ti.name)
            h = hashlib.sha256()
            f = tf.extractfile(ti)
            n = 0
            while chunk := f.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
            if n != m["size"] or h.hexdigest() != m["sha256"]:
                return f"member {ti.name} does not match the manifest"
        missing = set(declared) - seen
        if missing:
            return f"members missing: {sorted(missing)}"
        return None
    except (tarfile.TarError, OSError, ValueError, KeyError) as e:
        return f"unreadable: {e}"
    finally:
        if z.stdout:
            z.stdout.close()
        z.wait()
        if z.returncode not in (0, None, -13, 141):
            pass


class Rig:
    """One engine's fault round: its projects, environment and checks."""

    def __init__(self, args, kind: str, ws: Path):
        self.kind = kind
        self.ws = ws / kind
        self.ws.mkdir(parents=True)
        self.binary = args.envrig
        self.home = self.ws / "home"
        self.images = Path(f"/var/lib/libvirt/images/envrig-faults-{TOKEN}")
        env = {k: v for k, v in os.environ.items()
               if k not in ("RUST_LOG", "ENVRIG_FILE", "ENVRIG_PROVIDER")}
        env.update(NO_COLOR="1", ENVRIG_HOME=str(self.home), ENVRIG_GC_SCOPE=str(self.ws))
        if kind == "libvirt":
            env["ENVRIG_LIBVIRT_IMAGES"] = str(self.images)
        self.env = env
        self.projects: dict[bool, Path] = {}
        self.archives: dict[bool, Path] = {}
        self.durations: dict[tuple[str, bool], float] = {}
        self.folders: set[Path] = set()
        self.layers: set[str] = set()
        import_help = run([self.binary, "import", "--help"], env=env).stdout
        self.dry_run = "--dry-run" in import_help
        # Its own archives: trusted (a libvirt box given as a host path needs trust).
        self.trust = ["--trust"] if "--trust" in import_help else []
        self.machines = ["vm"] if kind == "libvirt" else ["m1", "m2", "m3"]
        self.import_src: Path | None = None
        self.imports = 0

    # --- projects ---------------------------------------------------------------------

    def envfile(self, bake: bool) -> str:
        name = f"flt{TOKEN}{'b' if bake else 'n'}{self.kind[0]}"
        if self.kind == "docker":
            head = (f'[project]\nname = "{name}"\nbake = {str(bake).lower()}\n\n'
                    f'[boxes.bb]\ndocker = "{TEST_IMAGE}"\n\n'
                    '[defaults]\nbox = "bb"\nmemory = "64MiB"\n\n')
        else:
            # Baking libvirt machines bake warm layers: `up-warm` starts from them.
            head = (f'[project]\nname = "{name}"\nbake = {str(bake).lower()}\n'
                    f'warm = {str(bake).lower()}\n\n'
                    f'[boxes.tiny]\nlibvirt = "{GUEST.resolve()}"\n\n'
                    '[defaults]\nbox = "tiny"\nprovider = "libvirt"\nmemory = "256MiB"\n\n')
        text = head
        for i, m in enumerate(self.machines):
            text += f"[machines.{m}]\n"
            if i < 2:
                # A token of this run: the fingerprint, and so the baked layer, is ours.
                text += (f'[[machines.{m}.provision]]\nshell = "echo {m} {TOKEN} >> /root/ran"\n')
            if i == 0:
                text += (f'[[machines.{m}.provision]]\nrun = "always"\n'
                         'shell = "echo up >> /root/always"\n')
        return text

    def project(self, bake: bool) -> Path:
        if bake not in self.projects:
            d = self.ws / f"p-{'bake' if bake else 'nobake'}"
            d.mkdir()
            (d / "Envfile").write_text(self.envfile(bake))
            self.projects[bake] = d.resolve()
            self.folders.add(d.resolve())
        return self.projects[bake]

    def envrig(self, d: Path, *args, timeout=CMD_TIMEOUT):
        return run([self.binary, *args], cwd=d, env=self.env, timeout=timeout)

    def must(self, d: Path, *args):
        p = self.envrig(d, *args)
        if p.returncode != 0:
            raise BenchError(f"`envrig {' '.join(args)}` in {d.name} failed ({p.returncode}): "
                             f"{p.stderr[-1500:]}")
        return p

    def archive(self, bake: bool) -> Path:
        """An export of the project (made once, by an export nobody kills)."""
        if bake not in self.archives:
            d = self.project(bake)
            self.must(d, "up")
            out = self.ws / "out" / f"source-{'bake' if bake else 'nobake'}.tar.zst"
            out.parent.mkdir(exist_ok=True)
            self.must(d, "export", "-o", out)
            self.reset(d)
            self.archives[bake] = out
        return self.archives[bake]

    def reset(self, d: Path):
        self.envrig(d, "destroy", "-f")
        self.envrig(d, "gc")

    # --- one round ----------------------------------------------------------------------

    def prepare(self, cmd: str, bake: bool, rnd: int):
        """Makes what `cmd` needs; returns (folder it runs in, its arguments, output file)."""
        d = self.project(bake)
        out = None
        if cmd == "up":
            args = ["up"]
        elif cmd == "up-warm":
            # A machine made again from its layer: warm when the layer keeps its memory.
            self.must(d, "up")
            self.must(d, "destroy", "-f")
            args = ["up"]
        elif cmd == "import":
            src = self.archive(bake)
            self.import_src = src
            self.imports += 1
            d = self.ws / f"imp-{rnd}-{self.imports}"
            d.mkdir()
            d = d.resolve()
            self.folders.add(d)
            args = ["import", *self.trust, str(src), "-C", str(d)]
        else:
            self.must(d, "up")
            if cmd == "provision":
                args = ["provision", "--force"]
            elif cmd == "snapshot-save":
                # Every other round replaces a snapshot that exists.
                if rnd % 2:
                    self.must(d, "snapshot", "save", "s")
                    args = ["snapshot", "save", "s", "--force"]
                else:
                    args = ["snapshot", "save", "s"]
            elif cmd == "snapshot-restore":
                self.must(d, "snapshot", "save", "s")
                args = ["snapshot", "restore", "s"]
            elif cmd == "export":
                out = self.ws / "out" / f"r{rnd}.tar.zst"
                out.parent.mkdir(exist_ok=True)
                args = ["export", "-o", str(out)]
            else:
                self.must(d, "snapshot", "save", "s")
                args = ["destroy", "-f"]
        return d, args, out

    def kill_round(self, cmd: str, bake: bool, rnd: int, rng: random.Random) -> dict:
        key = (cmd, bake)
        result = {"command": cmd, "bake": bake, "engine": self.kind, "killed": False,
                  "problems": []}
        # Until a run of it was seen whole, a guess; then its duration: kills land anywhere
        # in [0, the time the command takes).
        limit = self.durations.get(key, 12.0 if cmd == "import" else 4.0)
        for _attempt in range(4):
            d, args, out = self.prepare(cmd, bake, rnd)
            delay = rng.uniform(0, limit)
            t0 = time.monotonic()
            child = subprocess.Popen([self.binary, *args], cwd=d, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
            try:
                child.wait(timeout=delay)
                killed = False
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
                killed = True
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise BenchError("a killed envrig did not go within 30 s")
            result.update(delay_ms=round(delay * 1000))
            if killed:
                result["killed"] = True
                result["problems"] += self.check(d, cmd, out)
                return result
            if child.returncode != 0:
                result["problems"].append(
                    f"converge: `envrig {' '.join(map(str, args))}` (not killed) exited "
                    f"{child.returncode}")
            # It finished first: now its duration is known; start again.
            self.durations[key] = limit = max(0.05, time.monotonic() - t0)
            self.finish(d)
            self.reset(self.project(bake))
        return result

    # --- checks -------------------------------------------------------------------------

    def check(self, d: Path, cmd: str, out: Path | None) -> list[str]:
        problems = []
        # 1. Nothing corrupt.
        if out is not None:
            stray = [p.name for p in out.parent.iterdir()
                     if p != out and not p.name.startswith("source-") and p.suffix != ".zst"]
            if stray:
                problems.append(f"leftover: beside the export file: {stray}")
            if out.exists():
                why = verify_archive(out)
                if why is None and self.dry_run:
                    tmp = Path(tempfile.mkdtemp(dir=self.ws))
                    p = self.envrig(tmp, "import", "--dry-run", *self.trust, str(out), "-C",
                                    str(tmp / "x"))
                    if p.returncode != 0:
                        why = f"`import --dry-run` refused it: {p.stderr.strip()[-300:]}"
                    shutil.rmtree(tmp, ignore_errors=True)
                if why:
                    problems.append(f"corrupt: export file {out.name}: {why}")
                out.unlink()
        converge = d
        if cmd == "import" and not (d / "Envfile").exists():
            # The user's next step after a killed import: import again.
            p = self.envrig(d, "import", *self.trust, str(self.import_src), "-C", str(d))
            if p.returncode != 0:
                problems.append(f"converge: import again failed: {p.stderr.strip()[-400:]}")
                self.finish(d)
                return problems + self.leftovers()
        problems += self.snapshots_whole(converge)
        # 2. `up` converges.
        p = self.envrig(converge, "up")
        if p.returncode != 0:
            problems.append(f"converge: up failed ({p.returncode}): {p.stderr.strip()[-600:]}")
        else:
            st = self.envrig(converge, "status", "--json")
            try:
                ms = json.loads(st.stdout)["machines"]
                states = {m["machine"]: m["state"] for m in ms}
            except (ValueError, KeyError):
                states = {}
            if sorted(states) != sorted(self.machines) or set(states.values()) != {"running"}:
                problems.append(f"converge: machines after up: {states}")
            ran = self.envrig(converge, "exec", self.machines[0], "--", "cat", "/root/ran")
            if ran.returncode != 0 or self.machines[0] not in ran.stdout:
                problems.append(f"converge: the once step's mark is missing: {ran.stdout!r} "
                                f"{ran.stderr.strip()[-300:]}")
            self.record_layers(converge)
        # 3. destroy + gc leave nothing.
        self.finish(converge)
        problems += self.leftovers()
        return problems

    def snapshots_whole(self, d: Path) -> list[str]:
        p = self.envrig(d, "snapshot", "list", "--json")
        if p.returncode != 0:
            return []
        try:
            rows = json.loads(p.stdout)
            rows = rows.get("snapshots", rows) if isinstance(rows, dict) else rows
        except ValueError:
            return [f"corrupt: `snapshot list --json` is not JSON: {p.stdout[:200]!r}"]
        problems = []
        for row in rows:
            if sorted(row.get("machines", [])) != sorted(self.machines):
                problems.append(f"corrupt: snapshot {row.get('name')} lists {row.get('machines')}")
                continue
            # Whole means restorable.
            r = self.envrig(d, "snapshot", "restore", row["name"])
            if r.returncode != 0 and "no snapshot named" in r.stderr:
                # Listed before the killed envrig's last engine calls landed (a replacement
                # killed half-way): gone whole since, which is allowed.
                again = self.envrig(d, "snapshot", "list", "--json").stdout
                if f'"name":"{row["name"]}"' not in again.replace(" ", ""):
                    continue
            if r.returncode != 0:
                problems.append(f"corrupt: snapshot {row['name']} does not restore: "
                                f"{r.stderr.strip()[-400:]}")
        return problems

    def record_layers(self, d: Path):
        if self.kind != "docker":
            return
        for l in lines(["docker", "ps", "-a", "--filter", f"label=dev.envrig.folder={d}",
                        "--format", '{{.Label "dev.envrig.fingerprint"}} {{.Label "dev.envrig.layer"}}']):
            self.layers.update(x for x in l.split() if x)

    def finish(self, d: Path):
        if (d / "Envfile").exists():
            self.envrig(d, "destroy", "-f")
        self.envrig(d, "gc")

    def leftovers(self) -> list[str]:
        found = []
        for f in sorted(self.folders):
            label = f"label=dev.envrig.folder={f}"
            for what, cmd in [
                ("container", ["docker", "ps", "-aq", "--filter", label]),
                ("image", ["docker", "images", "-aq", "--filter", label]),
                ("network", ["docker", "network", "ls", "-q", "--filter", label]),
                ("volume", ["docker", "volume", "ls", "-q", "--filter", label]),
            ]:
                ids = lines(cmd)
                if ids:
                    found.append(f"leftover: {len(ids)} docker {what}(s) of {f.name}")
            state = f / ".envrig"
            if state.is_dir():
                extra = sorted(p.name for p in state.iterdir() if p.name not in ENVRIG_OK)
                if extra:
                    found.append(f"leftover: {f.name}/.envrig holds {extra}")
            if f.name.startswith("imp-"):
                extra = sorted(p.name for p in f.iterdir()
                               if p.name not in (".envrig", "Envfile", "Envfile.lock"))
                if extra:
                    found.append(f"leftover: {f.name} holds {extra}")
        prefix = f"flt{TOKEN}"
        if self.kind == "libvirt":
            doms = [n for n in lines(["virsh", "-c", "qemu:///system", "list", "--all", "--name"])
                    if n.startswith(prefix)]
            if doms:
                found.append(f"leftover: libvirt domains {doms}")
            nets = [n for n in lines(["virsh", "-c", "qemu:///system", "net-list", "--all",
                                      "--name"]) if n.startswith(prefix)]
            if nets:
                found.append(f"leftover: libvirt networks {nets}")
            if self.images.is_dir():
                extra = [p.name for p in self.images.iterdir()
                         if p.name not in (".boxes", ".accel", ".imports", ".hashes")]
                extra += [f".imports/{p.name}" for p in (self.images / ".imports").glob("*")]
                extra += [f".boxes/{p.name}" for p in (self.images / ".boxes").glob(".*")]
                if extra:
                    found.append(f"leftover: in the images folder: {sorted(extra)}")
            procs = processes_naming(self.images)
            if procs:
                found.append(f"leftover: processes working on the images folder: {procs}")
        if self.home.is_dir():
            work = [str(p.relative_to(self.home)) for p in self.home.rglob("*")
                    if ".work-" in p.name or p.name.startswith(".tmp")]
            if work:
                found.append(f"leftover: work files under ENVRIG_HOME: {work}")
        return found

    def cleanup(self):
        for f in sorted(self.folders):
            if (f / "Envfile").exists():
                self.envrig(f, "destroy", "-f", timeout=120)
            for what in (["ps", "-aq"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
                ids = lines(["docker", *what, "--filter", f"label=dev.envrig.folder={f}"])
                if ids:
                    verb = {"ps": ["rm", "-f"], "network": ["network", "rm"],
                            "volume": ["volume", "rm", "-f"]}[what[0]]
                    run(["docker", *verb, *ids])
            ids = lines(["docker", "images", "-q", "--filter", f"label=dev.envrig.folder={f}"])
            if ids:
                run(["docker", "rmi", "-f", *ids])
        for fp in self.layers:
            run(["docker", "rmi", f"envrig-baked-{fp}"])
        if self.kind == "libvirt":
            prefix = f"flt{TOKEN}"
            for n in lines(["virsh", "-c", "qemu:///system", "list", "--all", "--name"]):
                if n.startswith(prefix):
                    run(["virsh", "-c", "qemu:///system", "destroy", n])
                    run(["virsh", "-c", "qemu:///system", "undefine", n,
                         "--snapshots-metadata", "--nvram"])
            for n in lines(["virsh", "-c", "qemu:///system", "net-list", "--all", "--name"]):
                if n.startswith(prefix):
                    run(["virsh", "-c", "qemu:///system", "net-destroy", n])
                    run(["virsh", "-c", "qemu:///system", "net-undefine", n])
            shutil.rmtree(self.images, ignore_errors=True)


def summarize(results: list[dict], minutes: dict[str, float]) -> dict:
    table = {}
    for r in results:
        key = f"{r['engine']} {r['command']}"
        row = table.setdefault(key, {"kills": 0, "leftovers": 0, "corrupt": 0, "converge": 0})
        row["kills"] += r["killed"]
        for p in r["problems"]:
            kind = p.split(":", 1)[0]
            row[{"leftover": "leftovers", "corrupt": "corrupt"}.get(kind, "converge")] += 1
    return {"rounds": table, "minutes": minutes,
            "kills": sum(r["killed"] for r in results),
            "problems": sum(len(r["problems"]) for r in results)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docker", type=int, default=150, help="kills on Docker (0..1000)")
    ap.add_argument("--libvirt", type=int, default=50, help="kills on libvirt (0..1000)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--envrig", type=Path, default=REPO / "target" / "debug" / "envrig")
    ap.add_argument("--minutes", type=float, default=90.0, help="stop starting rounds after")
    ap.add_argument("--json", type=Path, help="write every round and the summary here")
    args = ap.parse_args(argv)
    if not (0 <= args.docker <= 1000 and 0 <= args.libvirt <= 1000):
        ap.error("--docker and --libvirt take 0..1000")
    if not args.envrig.is_file():
        log(f"no envrig binary at {args.envrig}: `cargo build` first, or --envrig PATH")
        return 2
    if shutil.which("zstd") is None:
        log("the `zstd` CLI is needed to verify export files")
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    log(f"faults: seed {seed}, token {TOKEN}")
    ws = Path(tempfile.mkdtemp(prefix=f"envrig-faults-{TOKEN}-")).resolve()
    deadline = time.monotonic() + args.minutes * 60
    results: list[dict] = []
    minutes: dict[str, float] = {}
    rigs = []

    def interrupted(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    code = 0
    try:
        for kind, kills in (("docker", args.docker), ("libvirt", args.libvirt)):
            if kills == 0:
                continue
            if kind == "libvirt" and not GUEST.exists():
                raise BenchError(f"the test guest {GUEST} is missing; run scripts/host-setup.sh")
            rig = Rig(args, kind, ws)
            rigs.append(rig)
            t0 = time.monotonic()
            done = 0
            rnd = 0
            # Bounded: a round that never lands a kill does not loop forever.
            while done < kills and rnd < kills * 2 and time.monotonic() < deadline:
                cmds = COMMANDS + ["up-warm"] if kind == "libvirt" else COMMANDS
                cmd = cmds[rnd % len(cmds)]
                bake = (rnd // len(cmds)) % 2 == 0
                try:
                    r = rig.kill_round(cmd, bake, rnd, rng)
                except BenchError as e:
                    r = {"command": cmd, "bake": bake, "engine": kind, "killed": False,
                         "problems": [f"converge: {e}"]}
                    for d in sorted(rig.folders):
                        rig.finish(d)
                results.append(r)
                done += r["killed"]
                rnd += 1
                mark = "ok" if not r["problems"] else "; ".join(r["problems"])
                log(f"[{kind} {done}/{kills}] {cmd} bake={'on' if bake else 'off'} "
                    f"kill at {r.get('delay_ms', '-')} ms: {mark}")
            minutes[kind] = round((time.monotonic() - t0) / 60, 1)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        code = 2
    except BenchError as e:
        log(f"faults: {e}")
        code = 2
    finally:
        for rig in rigs:
            rig.cleanup()
        shutil.rmtree(ws, ignore_errors=True)
    summary = summarize(results, minutes)
    summary["seed"] = seed
    print(f"{'engine command':26} {'kills':>6} {'leftovers':>10} {'corrupt':>8} {'converge':>9}")
    for k, row in sorted(summary["rounds"].items()):
        print(f"{k:26} {row['kills']:>6} {row['leftovers']:>10} {row['corrupt']:>8} "
              f"{row['converge']:>9}")
    print(f"total: {summary['kills']} kills, {summary['problems']} problems; minutes {minutes}; "
          f"seed {seed}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rounds": results}, indent=1))
    if code:
        return code
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
