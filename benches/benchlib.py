"""Shared pieces of the Python bench scripts: tokens, ports, process memory.

Standard library only. The scripts import it from their own folder
(`python3 benches/<script>.py` puts `benches/` first on the module path).
"""

import base64
import hashlib
import hmac
import json
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
