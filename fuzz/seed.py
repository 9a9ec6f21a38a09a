#!/usr/bin/env python3
"""seed.py: writes the fuzz targets' seed corpus, fuzz/corpus/<target>/, from the repo.

- envfile: templates/*.toml, Envfile.example, and every Envfile written as a string in the
  Rust sources and tests (raw strings r#"..."# and plain "...\\n..." ones that hold a
  `[machines`, `[boxes`, `[project` or `[defaults` table).
- lock: lock files as `envrig lock` writes them (built here from the same shapes), and the
  broken ones the tests use (a multi-byte character in a fingerprint, a short box id).
- archive: uncompressed tars as `envrig export` lays them out (manifest.json first, then
  envfile/... and machines/NAME.image, with true sizes and sha256s), and the hostile ones
  tests/import_hostile.rs refuses; the archive target compresses an input that is not zstd.

The corpus is generated, not committed (fuzz/.gitignore), so it follows the tests as they
change; `bench/fuzz.sh` runs this first. Inputs that once crashed a target are committed in
fuzz/regressions/<target>/ and copied in too. Idempotent: each seed is named by the sha1 of
its content (as libFuzzer names its finds), so running it again adds nothing. Python 3
standard library only.

    python3 fuzz/seed.py
"""

import hashlib
import io
import json
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"

TABLES = ("[machines", "[boxes", "[project", "[defaults", "[network")


def rust_strings(text):
    """Envfile-looking string literals of a Rust source: raw ones as they are, plain ones
    with their escapes decoded."""
    out = []
    for m in re.finditer(r'r(#*)"(.*?)"\1', text, re.S):
        out.append(m.group(2))
    for m in re.finditer(r'(?<![r#\w])"((?:[^"\\\n]|\\.)*)"', text):
        s = m.group(1)
        if "\\n" not in s:
            continue
        try:
            s = s.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
        except (UnicodeDecodeError, UnicodeEncodeError):
            continue
        out.append(s)
    return [s for s in out if any(t in s for t in TABLES)]


def envfiles():
    seeds = [p.read_text() for p in sorted((ROOT / "templates").glob("*.toml"))]
    example = ROOT / "Envfile.example"
    if example.exists():
        seeds.append(example.read_text())
    for rs in sorted([*ROOT.glob("src/**/*.rs"), *ROOT.glob("tests/**/*.rs")]):
        seeds.extend(rust_strings(rs.read_text()))
    # The durations at the bound and past it.
    for ttl in ("100y", "10000y", "584942417355y"):
        seeds.append(
            f'[boxes.bb]\ndocker = "x"\n[machines.web]\nbox = "bb"\nttl = "{ttl}"\n'
            f'[machines.web.ready]\ncommand = "true"\ntimeout = "{ttl}"\n'
        )
    return seeds


def hexes(seed, n=64):
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def lock_text(machines, boxes):
    """A lock as `lock::render` writes it: the header, then sorted TOML."""
    lines = [
        "# Envfile.lock: the bases and machines the Envfile resolved to. Written by `envrig lock`",
        "",
        "version = 1",
        "",
    ]
    for box, providers in sorted(boxes.items()):
        for provider, ident in sorted(providers.items()):
            lines.append(f"[boxes.{box}.{provider}]")
            for k, v in ident.items():
                lines.append(f"{k} = {json.dumps(v)}")
            lines.append("")
    for name, (provider, box, fp) in sorted(machines.items()):
        lines += [
            f"[machines.{name}]",
            f'provider = "{provider}"',
            f'box = "{box}"',
            f'fingerprint = "{fp}"',
            "",
        ]
    return "\n".join(lines)


def locks():
    img = "sha256:" + hexes("image")
    good = lock_text(
        {"web": ("docker", "bb", hexes("web")), "db": ("docker", "bb", hexes("db"))},
        {"bb": {"docker": {"id": img, "digest": "envrig-test/busybox@" + img}}},
    )
    vm = lock_text(
        {"vm": ("libvirt", "debian", hexes("vm"))},
        {"debian": {"libvirt": {"id": "sha256:" + hexes("box"), "size": 123456789}}},
    )
    multibyte = "a" * 11 + "é" + "b" * 51
    return [
        good,
        vm,
        lock_text({"web": ("docker", "bb", multibyte)}, {"bb": {"docker": {"id": img}}}),
        lock_text({"web": ("docker", "bb", hexes("web"))}, {"bb": {"docker": {"id": "sha256:1"}}}),
        "version = 7\n",
        "version = 1\n",
    ]


def tar_bytes(members):
    """members: (path, bytes, kind) with kind "file", "symlink" or "dir"."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for path, body, kind in members:
            info = tarfile.TarInfo(path)
            info.mtime = 0
            if kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = body.decode()
                t.addfile(info)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(body)
                t.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def manifest(files, machines=()):
    return json.dumps(
        {
            "format": 1,
            "envrig": "0.1.0",
            "project": "seed",
            "snapshot": None,
            "created": "2026-01-01T00:00:00Z",
            "machines": list(machines),
            "members": [
                {"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                for p, b in files
            ],
        }
    ).encode()


def machine_entry(name):
    spec = {
        "resource_name": f"seed-0123456789abcdef-{name}-1",
        "machine": name,
        "base": "envrig-test/busybox:latest",
        "cpus": None,
        "memory_bytes": 268435456,
        "hostname": name,
        "env": {"A": "1"},
        "command": None,
        "ports": [{"host_ip": "127.0.0.1", "host_port": 8080, "guest_port": 80, "protocol": "tcp"}],
        "synced": [],
        "labels": {"dev.envrig.project": "seed"},
        "options": {"init": True},
        "network": {"network": "seed-net", "aliases": [name]},
    }
    snap = {
        "id": "sha256:" + hexes(name),
        "name": "s1",
        "machine": name,
        "created": "2026-01-01T00:00:00Z",
        "running": True,
        "spec": spec,
        "labels": {},
    }
    return {"machine": name, "provider": "docker", "member": f"machines/{name}.image", "snapshot": snap}


def archives():
    envfile = (ROOT / "templates" / "basic.toml").read_bytes()
    script = b"#!/bin/sh\necho provisioned\n"
    image = bytes(range(256)) * 4
    files = [("envfile/Envfile", envfile), ("envfile/setup.sh", script), ("machines/web.image", image)]
    good = [("manifest.json", manifest(files, [machine_entry("web")]), "file")]
    good += [(p, b, "file") for p, b in files]
    small = [("envfile/Envfile", envfile)]
    small_tar = [("manifest.json", manifest(small), "file"), ("envfile/Envfile", envfile, "file")]
    hostile = [
        # A member outside its folder, a link, a member the manifest does not list, a
        # checksum that does not match, and a manifest that is not first.
        [("manifest.json", manifest(small + [("envfile/../x", b"x")]), "file"),
         ("envfile/Envfile", envfile, "file"), ("envfile/../x", b"x", "file")],
        [("manifest.json", manifest(small), "file"), ("envfile/Envfile", envfile, "file"),
         ("envfile/link", b"/etc/passwd", "symlink")],
        [("manifest.json", manifest(small), "file"), ("envfile/Envfile", envfile, "file"),
         ("envfile/extra", b"extra", "file")],
        [("manifest.json", manifest(small), "file"), ("envfile/Envfile", envfile[:-1] + b"#", "file")],
        [("envfile/Envfile", envfile, "file"), ("manifest.json", manifest(small), "file")],
    ]
    return [tar_bytes(good), tar_bytes(small_tar)] + [tar_bytes(h) for h in hostile]


def main():
    seeds = {
        "envfile": [s.encode() for s in envfiles()],
        "lock": [s.encode() for s in locks()],
        "archive": archives(),
    }
    for target, items in seeds.items():
        regressions = ROOT / "fuzz" / "regressions" / target
        if regressions.is_dir():
            items += [p.read_bytes() for p in sorted(regressions.iterdir()) if p.is_file()]
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        new = 0
        for body in items:
            p = d / hashlib.sha1(body).hexdigest()
            if not p.exists():
                new += 1
                p.write_bytes(body)
        print(f"seed.py: {target}: {len(set(items))} seeds, {new} new")
    return 0


if __name__ == "__main__":
    sys.exit(main())
