"""A real `cordon serve` for the tests in tests/sdk.

    with CordonServer(binary) as server:
        token = server.token("acme", "alice")
        ... server.base_url ...

Starts the binary on a free loopback port with a temporary data directory
and a fresh HS256 secret, waits for /readyz, and stops it on exit. Tokens
come from the binary's own `cordon token`, so they are the tokens a
deployment's identity provider would sign with the same secret.
"""

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(condition: bool, what: str) -> None:
    """Prints `ok: what`, or exits non-zero with `FAILED: what`."""
    if not condition:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


class CordonServer:
    """`cordon serve` for the length of a `with` block."""

    def __init__(self, binary: str, model_dir: str = "models", extra_env=None):
        self.binary = binary
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self._data = tempfile.TemporaryDirectory()
        self.data_dir = self._data.name
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORDON_")}
        env.update(
            CORDON_BIND=f"127.0.0.1:{port}",
            CORDON_JWT_HS256_SECRET=secrets.token_hex(32),
            CORDON_SERVER_SECRET=secrets.token_hex(32),
            CORDON_MODEL_DIR=os.path.abspath(model_dir),
            CORDON_DATA_DIR=self.data_dir,
            CORDON_MIN_FREE_BYTES="0",
            RUST_LOG="warn",
        )
        env.update(extra_env or {})
        self.env = env
        self._process = None

    def token(self, tenant: str, sub: str) -> str:
        """A token for (tenant, sub), signed with this server's secret."""
        return subprocess.run(
            [self.binary, "token", "--tenant", tenant, "--sub", sub],
            env=self.env, check=True, capture_output=True, text=True,
        ).stdout.strip()

    def __enter__(self) -> "CordonServer":
        self._process = subprocess.Popen([self.binary, "serve"], env=self.env)
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{self.base_url}/readyz", timeout=1)
                return self
            except Exception:
                if self._process.poll() is not None:
                    sys.exit(f"cordon exited with {self._process.returncode}")
                time.sleep(0.25)
        self.__exit__(None, None, None)
        sys.exit("cordon was not ready after 60 s")

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=60)
            self._process = None
        self._data.cleanup()
