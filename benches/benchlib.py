"""Shared pieces of the Python bench scripts: tokens, ports, process memory.

Standard library only. The scripts import it from their own folder
(`python3 benches/<script>.py` puts `benches/` first on the module path).
"""

import base64
import hashlib
import hmac
import json
import secrets
import socket
import time


def b64(data: bytes) -> str:
    """Base64url without padding, as JWTs use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(key: str, tenant: str, sub: str, ttl: int = 86400) -> str:
    """An HS256 JWT for (tenant, sub), signed with the server's HS256 key."""
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": sub, "tenant": tenant, "exp": int(time.time()) + ttl}).encode())
    sig = hmac.new(key.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(sig)}"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    """The process's resident memory (VmRSS), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def serve(binary: str, env: dict, port: int, log_path: str):
    """Starts `binary serve` and returns the process once `/readyz` is 200."""
    import http.client
    import subprocess
    import sys

    log = open(log_path, "ab")
    proc = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=log)
    deadline = time.time() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            sys.exit(f"cordon did not start (see {log_path})")
        time.sleep(0.2)


def disk_bytes(path: str) -> int:
    """Allocated bytes under `path`, as `du` counts them (sparse files count what they use)."""
    import os

    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def server_env(environ: dict, data_dir: str, model_dir: str, jwt_key: str, port: int, **extra) -> dict:
    """The environment of a bench server: the caller's without any CORDON_*
    setting, plus a fresh data directory (embedded engine) and server secret,
    the model, an HS256 key and a port."""
    env = {k: v for k, v in environ.items() if not k.startswith("CORDON_")}
    env.update({
        "CORDON_BIND": f"127.0.0.1:{port}",
        "CORDON_SERVER_SECRET": secrets.token_hex(32),
        "CORDON_MODEL_DIR": model_dir,
        "CORDON_JWT_HS256_SECRET": jwt_key,
        "RUST_LOG": "warn,qdrant_edge::common::flags=error",
    })
    # The Qdrant engine refuses a data directory it would not use.
    if extra.get("CORDON_STORE") != "qdrant":
        env["CORDON_DATA_DIR"] = data_dir
    env.update(extra)
    return env


def call(method: str, url: str, token=None, body=None, timeout=120):
    """One JSON request; returns (status, parsed body or None). Raises on 4xx/5xx."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
