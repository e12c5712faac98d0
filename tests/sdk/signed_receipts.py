"""Erase receipts and scope statements checked by PyJWT, an independent JWT
library, with the public keys the server serves; and `cordon verify`.

    python tests/sdk/signed_receipts.py --bin target/debug/cordon
"""

import argparse
import json
import subprocess
import tempfile

import httpx
import jwt

from cordon_server import CordonServer, check


def decode(token: str, jwks: dict) -> dict:
    """The claims of `token` if a key of `jwks` signed it (PyJWT checks)."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in jwks["keys"] if k["kid"] == kid)
    return jwt.decode(token, jwt.PyJWK(key).key, algorithms=["EdDSA"], issuer="cordon",
                      options={"verify_aud": False, "require": ["iss", "iat"]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the cordon binary")
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()
    with CordonServer(args.bin, args.model_dir) as server:
        alice = {"Authorization": f"Bearer {server.token('acme', 'alice')}"}
        bob = {"Authorization": f"Bearer {server.token('acme', 'bob')}"}
        http = httpx.Client(base_url=server.base_url, timeout=30)
        jwks = http.get("/.well-known/cordon-signing-keys.json").json()
        check(jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519",
              "the server serves an Ed25519 JWKS")

        http.post("/v1/memories", headers=alice, json={"memories": [{"text": "alice likes figs"}, {"text": "alice has a cat"}]})
        r = http.post("/v1/memories/search", headers={**alice, "Cordon-Scope": "signed"}, json={"query": "figs"})
        statement = decode(r.headers["cordon-scope-statement"], jwks)
        check(statement["typ"] == "cordon.scope" and statement["returned"] == len(r.json()["results"])
              and statement["points_dropped"] == 0,
              f"PyJWT verifies a search's scope statement ({statement['returned']} returned, 0 dropped)")

        r = http.delete("/v1/memories", headers=alice)
        answer = r.json()
        claims = decode(answer["receipt"], jwks)
        check(claims["typ"] == "cordon.erase" and claims["deleted"] == 2,
              "PyJWT verifies alice's erase receipt (2 deleted)")
        token = answer["receipt"]
        header, payload, signature = token.split(".")
        forged = json.loads(jwt.utils.base64url_decode(payload))
        forged["deleted"] = 0
        forged_token = ".".join([header, jwt.utils.base64url_encode(json.dumps(forged).encode()).decode(), signature])
        try:
            decode(forged_token, jwks)
            check(False, "a receipt whose count was changed is refused")
        except jwt.InvalidSignatureError:
            check(True, "a receipt whose count was changed is refused")

        with tempfile.TemporaryDirectory() as tmp:
            keys = f"{tmp}/keys.json"
            with open(keys, "w") as f:
                json.dump(jwks, f)
            with open(f"{tmp}/erase.json", "w") as f:
                json.dump(answer, f)
            with open(f"{tmp}/forged.txt", "w") as f:
                f.write(forged_token)
            ok = subprocess.run([args.bin, "verify", f"{tmp}/erase.json", "--keys", keys], capture_output=True, text=True)
            check(ok.returncode == 0 and json.loads(ok.stdout)["deleted"] == 2, "cordon verify accepts the receipt offline")
            bad = subprocess.run([args.bin, "verify", f"{tmp}/forged.txt", "--keys", keys], capture_output=True, text=True)
            check(bad.returncode != 0 and "does not verify" in bad.stderr, "cordon verify refuses the changed one")
            public = subprocess.run([args.bin, "signing-key", "public"], env=server.env, capture_output=True, text=True)
            check(public.returncode == 0 and json.loads(public.stdout) == jwks,
                  "cordon signing-key public prints the keys the server serves")

        # Bob's log holds his own reads only; Alice's holds her erase only.
        http.post("/v1/memories/search", headers=bob, json={"query": "figs"})
        bob_log = http.get("/v1/access-log", headers=bob).json()["entries"]
        check([e["action"] for e in bob_log] == ["search"] and bob_log[0]["memories"] == 0,
              "bob's access log holds his search, with nothing found")
        alice_log = http.get("/v1/access-log", headers=alice).json()["entries"]
        check([e["action"] for e in alice_log] == ["erase"], "after her erase alice's log holds the erase alone")


if __name__ == "__main__":
    main()
