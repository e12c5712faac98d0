#!/usr/bin/env python3
"""Schemathesis against a real Cordon, driven by its own /openapi.json.

    tests/sdk/fuzz_openapi.py --bin <path to cordon> [--max-examples N] [--seed S]

Starts `cordon serve` (fresh data directory, an admin key, lockouts and
per-user rates raised so that the fuzzer's many 404s and bad bodies are not
cut short by a 429), then runs schemathesis twice from the served document:
the user API with a valid user token, and the admin API with the admin key.
The checks are the ones a client depends on: no 5xx, every status and
content type documented, and every body valid against its schema. Each run
is bounded by --max-examples per operation. Exits non-zero on any failure.
Run by scripts/sdk-tests.
"""

import argparse
import os
import secrets
import subprocess
import sys
import tempfile

from cordon_server import CordonServer, check

CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
])


def schemathesis(base_url: str, token: str, max_examples: int, seed: int, *selection: str) -> int:
    binary = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    command = [
        binary, "run", f"{base_url}/openapi.json",
        "--checks", CHECKS,
        "--header", f"Authorization: Bearer {token}",
        "--max-examples", str(max_examples),
        "--seed", str(seed),
        "--workers", "1",
        "--generation-database", "none",
        "--no-color",
        *selection,
    ]
    print("$", " ".join(c if not c.startswith("Authorization") else "Authorization: Bearer ..."
                        for c in command), flush=True)
    # Its cache of crashes goes to the working directory; keep it out of the tree.
    with tempfile.TemporaryDirectory() as scratch:
        return subprocess.run(command, cwd=scratch).returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the cordon binary")
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--max-examples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    admin_key = secrets.token_hex(32)
    settings = {
        "CORDON_ADMIN_KEY": admin_key,
        "CORDON_LOCKOUT_THRESHOLD": "1000000",
        "CORDON_LOCKOUT_NOT_FOUND_THRESHOLD": "1000000",
        "CORDON_USER_RPS": "100000",
        "CORDON_USER_BURST": "100000",
        "CORDON_AUDIT": "off",
    }
    with CordonServer(args.bin, args.model_dir, extra_env=settings) as server:
        token = server.token("acme", "fuzzer")
        user = schemathesis(server.base_url, token, args.max_examples, args.seed,
                            "--exclude-path-regex", "^/admin/")
        check(user == 0, "schemathesis: the user API (and /mcp) with a user token")
        # No links lead into the admin API, so it has no stateful phase.
        admin = schemathesis(server.base_url, admin_key, args.max_examples, args.seed,
                             "--include-path-regex", "^/admin/",
                             "--phases", "examples,coverage,fuzzing")
        check(admin == 0, "schemathesis: the admin API with the admin key")


if __name__ == "__main__":
    main()
