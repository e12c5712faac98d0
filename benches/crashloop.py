#!/usr/bin/env python3
"""Crash loop: Cordon must lose no acknowledged write across `kill -9`.

Starts the Cordon binary on a fresh data directory, drives it with several
client threads storing and deleting memories for many users, and at a random
moment kills it with SIGKILL. It then restarts the server on the same data
directory and checks, for every user:

- every memory acknowledged (201) and not deleted still answers
  `GET /v1/memories/{id}` 200 with exactly the text (and metadata) stored,
  for its owner; otherwise `lost`;
- the same id asked for with another user's token (half the time the
  "twin": same `sub`, other tenant) answers 404; otherwise `leak`;
- every id whose delete was acknowledged (204) answers 404; otherwise
  `resurrected`;
- the owner's full paged list (`GET /v1/memories?limit=100&cursor=...`)
  holds only texts carrying the owner's own canary (otherwise `leak`), every
  acknowledged live id (otherwise `lost`), no acknowledged-deleted id
  (otherwise `resurrected`), at most one id per canary (otherwise
  `duplicate`) and no text that was never sent (otherwise `phantom`).

Then it resumes load on the restarted server, and repeats for `--kills`
rounds. Every text carries a unique canary `[crash <run>-<user>-<n>]`, so any
text can be attributed to the user and the store that wrote it.

An operation cut off by the kill (connection reset, timeout, 5xx) is
*ambiguous*: it may or may not have landed. The restarted server settles it,
since the process that could still have applied it is dead: an ambiguously
deleted id is looked up once after the restart and is from then on held to
being present (if it answered 200) or gone (if 404); a memory of an ambiguous
store that shows up in the owner's list is adopted as live. From then on both
are checked like acknowledged ones. A request refused at connect (the server
was already dead) was never sent, so its texts must never appear.

With `--qdrant-bin` Cordon runs on a Qdrant server started here on loopback,
and `--qdrant-kills` of the rounds also kill -9 and restart Qdrant (before
Cordon is restarted). With `--idempotency` every store carries a fresh
`Idempotency-Key`; an ambiguous store is retried once after the restart with
the same key and body (its ids then count as acknowledged), and `--replays`
acknowledged stores per round are sent again with their key, which must
answer the same ids (a new id for a canary counts as `duplicate`).

After every round the server's log is scanned for `panicked` (and ERROR/WARN
lines, reported but not judged).

    python3 benches/crashloop.py --bin "$CARGO_TARGET_DIR/release/cordon" --kills 50
    python3 benches/crashloop.py --bin target/debug/cordon --kills 5 --users 10 --clients 2
    python3 benches/crashloop.py --bin ... --qdrant-bin /opt/qdrant/qdrant --qdrant-kills 5

Exit status: 0 when nothing was lost, resurrected, leaked, duplicated or
invented, no answer was unexpected, the server never panicked or died on its
own, every verification request got an answer, and at least one memory was
verified; 1 otherwise; 2 when the harness cannot run (the server does not
start, a bad option, ...). Everything listens on 127.0.0.1 only; every child
process is killed on exit; the run's temporary directory (data, logs) is
removed unless `--keep` is given or the run failed. Python 3.11 standard
library only.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import ctypes
import hashlib
import hmac
import http.client
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Users alternate between two tenants with the same `sub`s, so that the
# cross-user probe also tries "same sub, other tenant".
TENANTS = ("crash", "crash-b")
CANARY_RE = re.compile(r"\[crash ([0-9a-f]+)-(\d+)-(\d+)\]")
PAGE_LIMIT = 100
MAX_SAMPLES = 30
SAMPLES_PER_KIND = 5
WORDS = (
    "peanuts standup moved tuesday allergic coffee budget review flight "
    "gate passport dentist invoice garden tomatoes piano lesson daughter "
    "birthday cake marathon knee doctor meeting quarterly report rust "
    "compiler deploy friday rollback cat vet vaccine rent landlord "
    "café naïve jalapeño crème brûlée 東京 🧪 über smörgåsbord"
).split()

# Counters, in report order. The first group is the load, the second the
# verdict (any non-zero one fails the run), the third is information.
LOAD_FIELDS = (
    "rounds", "cordon_kills", "qdrant_kills", "stores_acked", "memories_acked",
    "deletes_acked", "ambiguous", "refused", "server_errors",
)
FAIL_FIELDS = (
    "lost", "resurrected", "leaks", "duplicates", "phantoms", "unexpected",
    "verify_errors", "panics", "unplanned_exits",
)
INFO_FIELDS = (
    "verified", "deleted_checked", "cross_checked", "ambiguous_landed",
    "maybe_present", "maybe_gone", "retries_acked", "retries_landed", "retries_ambiguous",
    "replays_same", "replays_ambiguous", "log_errors", "log_warnings",
)


class CannotRun(Exception):
    """The harness cannot do its job (exit 2); this says nothing about the server."""


# ------------------------------------------------------------------ children

_children: list["Child"] = []
_libc = None
try:  # Loaded once here: a child must not load libraries between fork and exec.
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    pass


def _die_with_parent():
    # PR_SET_PDEATHSIG: the kernel kills the child if the harness itself dies,
    # even by kill -9, so no server outlives a crashed harness.
    if _libc is not None:
        _libc.prctl(1, int(signal.SIGKILL))


class Child:
    """A server process started here, with its output in a log file."""

    def __init__(self, name, argv, env, log_path, cwd=None):
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            try:
                self.popen = subprocess.Popen(
                    argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as e:
                raise CannotRun(f"cannot start {name} ({argv[0]}): {e}") from e
        _children.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self):
        """SIGKILL and reap, so that its port and lock file are free afterwards."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired as e:
            raise CannotRun(f"{self.name} pid {self.popen.pid} survives SIGKILL") from e

    def log_tail(self, lines=20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""


def kill_all_children():
    for child in _children:
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


atexit.register(kill_all_children)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(strip_prefixes) -> dict:
    # Settings exported in the caller's shell (CORDON_STORE=qdrant, ...) must
    # not leak into the servers started here.
    return {k: v for k, v in os.environ.items() if not k.startswith(strip_prefixes)}


def http_status(port, path, timeout=2.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_ready(child: Child, port: int, timeout: float) -> float:
    """Seconds until GET /readyz answered 200."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not child.alive():
            raise CannotRun(
                f"{child.name} exited with {child.popen.returncode} before it was ready;"
                f" log {child.log_path} ends:\n{child.log_tail()}"
            )
        try:
            if http_status(port, "/readyz") == 200:
                return time.monotonic() - start
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.1)
    raise CannotRun(
        f"{child.name} not ready after {timeout:.0f} s; log {child.log_path} ends:\n"
        f"{child.log_tail()}"
    )


# ---------------------------------------------------------------- HTTP, JWT


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(secret: str, tenant: str, sub: str) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps(
        {"sub": sub, "tenant": tenant, "exp": int(time.time()) + 86400}
    ).encode())
    signing_input = f"{header}.{claims}".encode()
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(signature)}"


class NotSent(Exception):
    """The connection could not be made, so the request never left."""


class Http:
    """One keep-alive connection to the server, remade after any failure."""

    def __init__(self, port: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method, path, token=None, body=None, key=None):
        """(status, JSON reply or None). Raises NotSent when connecting failed,
        OSError/HTTPException when it failed after the request may have left."""
        if self.conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.connect()
            except OSError as e:
                conn.close()
                raise NotSent(str(e)) from e
            self.conn = conn
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if key:
            headers["Idempotency-Key"] = key
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if resp.will_close:
            self.close()
        return resp.status, parse_json(raw)


def parse_json(raw: bytes):
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:200].decode(errors="replace")


ANSWERED, AMBIGUOUS, REFUSED = "answered", "ambiguous", "refused"


def attempt(http_: Http, method, path, token, body=None, key=None):
    """One try of a write: (outcome, status, reply). A 5xx is ambiguous too: on
    a Qdrant server a write cut off by the deadline may still be applied."""
    try:
        status, reply = http_.request(method, path, token, body, key)
    except NotSent:
        return REFUSED, None, None
    except (OSError, http.client.HTTPException) as e:
        return AMBIGUOUS, None, repr(e)
    if status >= 500:
        return AMBIGUOUS, status, reply
    return ANSWERED, status, reply


def fetch(http_: Http, method, path, token):
    """A verification read: retried, since the server is up and one dropped
    connection proves nothing. (status, reply), or (None, why) after 4 tries."""
    why = None
    for i in range(4):
        try:
            status, reply = http_.request(method, path, token)
            if status < 500:
                return status, reply
            why = f"{status} {reply}"
        except (NotSent, OSError, http.client.HTTPException) as e:
            why = repr(e)
        time.sleep(0.2 * (i + 1))
    return None, why


def ids_of(reply, count):
    """The `ids` of a store reply when they are `count` distinct strings."""
    if not isinstance(reply, dict):
        return None
    ids = reply.get("ids")
    if (not isinstance(ids, list) or len(ids) != count
            or not all(isinstance(i, str) for i in ids) or len(set(ids)) != count):
        return None
    return ids


# -------------------------------------------------------------------- state


class Stats:
    """Counters shared by all threads, and a few examples of each failure."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = dict.fromkeys(LOAD_FIELDS + FAIL_FIELDS + INFO_FIELDS, 0)
        self.samples: list[str] = []
        self.per_kind: dict[str, int] = {}
        self.seen: set = set()

    def add(self, name, n=1, sample=None):
        with self.lock:
            self.counts[name] += n
            # A few of each kind, so one flood does not hide the others.
            if sample is not None and len(self.samples) < MAX_SAMPLES \
                    and self.per_kind.get(name, 0) < SAMPLES_PER_KIND:
                self.per_kind[name] = self.per_kind.get(name, 0) + 1
                self.samples.append(f"{name}: {sample}")

    def once(self, name, key, sample) -> bool:
        """Counts `name` the first time `key` is reported, from any thread."""
        with self.lock:
            if (name, key) in self.seen:
                return False
            self.seen.add((name, key))
        self.add(name, sample=sample)
        return True

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.counts)

    def failures(self) -> int:
        with self.lock:
            return sum(self.counts[f] for f in FAIL_FIELDS)


class Item:
    """One text sent for storage; `state` is what we know of its fate."""

    __slots__ = ("text", "metadata", "state")

    def __init__(self, text, metadata):
        self.text = text
        self.metadata = metadata  # None when the store sent none
        self.state = "sending"  # then: acked | ambiguous | unsent


class User:
    """One token and everything known about its memories. Only the thread that
    owns the user touches these records (load and verification alike)."""

    def __init__(self, idx: int, run: str, secret: str):
        self.idx = idx
        self.tenant = TENANTS[idx % 2]
        self.sub = f"user-{idx // 2}"
        self.token = hs256_token(secret, self.tenant, self.sub)
        self.run = run
        self.next_n = 0
        self.items: dict[int, Item] = {}
        self.live: dict[str, int] = {}  # id -> n: acknowledged (or settled present), not deleted
        self.deleted: set[str] = set()  # delete answered 204
        self.gone: set[str] = set()  # ambiguous delete, settled as deleted after a restart
        self.maybe: dict[str, int] = {}  # ambiguous delete, not settled yet
        self.extra: set[str] = set()  # duplicates and phantoms, already counted
        self.canary_ids: dict[int, set[str]] = {}  # n -> every id the server gave for it
        # Each failure counted once per id (or canary), however often it shows.
        self.lost: set[str] = set()
        self.resurrected: set[str] = set()
        self.dup_canaries: set[int] = set()
        # --idempotency: ambiguous stores to retry, and acknowledged ones by key.
        self.pending: list[tuple[str, dict, list[int]]] = []
        self.keyed: dict[str, tuple[dict, list[int], list[str]]] = {}

    def canary(self, n) -> str:
        return f"[crash {self.run}-{self.idx}-{n}]"

    def new_item(self, rng: random.Random, rnd: int, with_metadata: bool) -> int:
        n = self.next_n
        self.next_n += 1
        words = " ".join(rng.choices(WORDS, k=rng.randint(3, 14)))
        metadata = None
        if with_metadata:
            metadata = {"n": n, "round": rnd, "kind": rng.choice(("chat", "note", "task")),
                        "pinned": rng.random() < 0.5}
        self.items[n] = Item(f"{words} {self.canary(n)}", metadata)
        return n

    def acknowledge(self, n, mid, stats: Stats):
        self.items[n].state = "acked"
        if mid not in self.deleted and mid not in self.gone:
            self.live[mid] = n
        self.bind(n, mid, stats)

    def bind(self, n, mid, stats: Stats):
        """The server showed `mid` for canary n; a second id means it stored twice."""
        ids = self.canary_ids.setdefault(n, set())
        ids.add(mid)
        if len(ids) > 1 and n not in self.dup_canaries:
            self.dup_canaries.add(n)
            stats.add("duplicates", sample=f"user {self.idx} canary {n} has ids {sorted(ids)}")

    def mark_lost(self, mid, stats: Stats, why):
        self.live.pop(mid, None)
        if mid not in self.lost:
            self.lost.add(mid)
            stats.add("lost", sample=f"user {self.idx} id {mid}: {why}")

    def mark_resurrected(self, mid, stats: Stats, why):
        if mid not in self.resurrected:
            self.resurrected.add(mid)
            stats.add("resurrected", sample=f"user {self.idx} id {mid}: {why}")

    def matches(self, reply, mid, n) -> bool:
        """A GET reply is the memory stored: same id, same text, same metadata."""
        item = self.items[n]
        if not isinstance(reply, dict) or reply.get("id") != mid:
            return False
        if reply.get("text") != item.text:
            return False
        return item.metadata is None or reply.get("metadata") == item.metadata


# --------------------------------------------------------------------- load


def do_store(h: "Harness", http_: Http, user: User, rng: random.Random, rnd: int) -> bool:
    count = 1 if rng.random() < 0.5 else rng.randint(1, 5)
    single = count == 1 and rng.random() < 0.5
    ns = [user.new_item(rng, rnd, single or rng.random() < 0.7) for _ in range(count)]
    body = store_body(user, ns, single)
    key = uuid.uuid4().hex if h.args.idempotency else None
    outcome, status, reply = attempt(http_, "POST", "/v1/memories", user.token, body, key)
    if outcome == REFUSED:
        for n in ns:
            user.items[n].state = "unsent"
        h.stats.add("refused")
        return False
    if outcome == AMBIGUOUS:
        for n in ns:
            user.items[n].state = "ambiguous"
        if key:
            user.pending.append((key, body, ns))
        h.stats.add("ambiguous")
        if status is not None:
            h.stats.add("server_errors", sample=f"store: {status} {reply}")
        return False
    ids = ids_of(reply, count)
    if status != 201 or ids is None:
        # The README promises a rejected request changes nothing.
        for n in ns:
            user.items[n].state = "unsent"
        h.stats.add("unexpected", sample=f"store of {count} answered {status} {reply}")
        return False
    for n, mid in zip(ns, ids):
        user.acknowledge(n, mid, h.stats)
    if key:
        user.keyed[key] = (body, ns, ids)
    h.stats.add("stores_acked")
    h.stats.add("memories_acked", count)
    return True


def store_body(user: User, ns, single: bool) -> dict:
    def one(n):
        item = user.items[n]
        entry = {"text": item.text}
        if item.metadata is not None:
            entry["metadata"] = item.metadata
        return entry

    if single:
        return one(ns[0])
    return {"memories": [one(n) for n in ns]}


def do_delete(h: "Harness", http_: Http, user: User, rng: random.Random) -> bool:
    mid = rng.choice(list(user.live))
    outcome, status, reply = attempt(http_, "DELETE", f"/v1/memories/{mid}", user.token)
    if outcome == REFUSED:
        h.stats.add("refused")
        return False
    if outcome == AMBIGUOUS:
        user.maybe[mid] = user.live.pop(mid)
        h.stats.add("ambiguous")
        if status is not None:
            h.stats.add("server_errors", sample=f"delete: {status} {reply}")
        return False
    if status == 204:
        user.live.pop(mid)
        user.deleted.add(mid)
        h.stats.add("deletes_acked")
        return True
    if status == 404:
        # Nothing else deletes a live id: the acknowledged memory is gone.
        user.mark_lost(mid, h.stats, "its delete answered 404 during load")
    else:
        h.stats.add("unexpected", sample=f"delete answered {status} {reply}")
    return False


def client_loop(h: "Harness", users, port, stop: threading.Event, seed, rnd):
    rng = random.Random(seed)
    http_ = Http(port, h.args.timeout)
    try:
        while not stop.is_set():
            user = rng.choice(users)
            if user.live and rng.random() < h.args.delete_share:
                ok = do_delete(h, http_, user, rng)
            else:
                ok = do_store(h, http_, user, rng, rnd)
            if not ok:
                stop.wait(0.05)  # no hot loop against a dead or failing server
    except Exception:  # noqa: BLE001 - a harness bug; reported, then exit 2
        h.thread_errors.append(traceback.format_exc())
    finally:
        http_.close()


# ------------------------------------------------------------- verification


def verify_users(h: "Harness", users, port, seed, replays: int):
    rng = random.Random(seed)
    http_ = Http(port, h.args.timeout)
    try:
        if h.args.idempotency:
            for user in users:
                retry_pending(h, http_, user)
            replay_some(h, http_, users, rng, replays)
        for user in users:
            settle_maybe(h, http_, user)
            check_live(h, http_, user, rng)
            check_deleted(h, http_, user)
            check_list(h, http_, user)
    except Exception:  # noqa: BLE001
        h.thread_errors.append(traceback.format_exc())
    finally:
        http_.close()


def retry_pending(h: "Harness", http_: Http, user: User):
    """--idempotency: each ambiguous store is sent once more, same key and body."""
    pending, user.pending = user.pending, []
    if not pending:
        return
    # Which of these stores already landed before the kill? Their canaries say.
    memories, _ = list_all(http_, user)
    present: dict[int, str] = {}
    for memory in memories or []:
        found = CANARY_RE.search(str(memory.get("text", "")))
        if found and found.group(1) == user.run and int(found.group(2)) == user.idx:
            present[int(found.group(3))] = memory.get("id")
    for key, body, ns in pending:
        outcome, status, reply = attempt(http_, "POST", "/v1/memories", user.token, body, key)
        if outcome != ANSWERED:
            h.stats.add("retries_ambiguous")  # given up: it stays ambiguous
            continue
        ids = ids_of(reply, len(ns))
        if status != 201 or ids is None:
            h.stats.add("unexpected", sample=f"retry of key {key} answered {status} {reply}")
            continue
        for n, mid in zip(ns, ids):
            user.acknowledge(n, mid, h.stats)
        user.keyed[key] = (body, ns, ids)
        h.stats.add("retries_acked")
        if all(present.get(n) == mid for n, mid in zip(ns, ids)):
            # The original had landed before the kill and the key found it:
            # the case idempotency exists for, worth knowing it was exercised.
            # (Had the retry made new ids, check_list counts the duplicates.)
            h.stats.add("retries_landed")


def replay_some(h: "Harness", http_: Http, users, rng: random.Random, budget: int):
    """--idempotency: acknowledged stores sent again must answer the same ids,
    also after a kill -9. Only stores whose memories are all still live, since
    what a key answers after its memories were deleted is not defined here."""
    candidates = [
        (user, key) for user in users for key, (_, _, ids) in user.keyed.items()
        if all(mid in user.live for mid in ids)
    ]
    for user, key in rng.sample(candidates, min(budget, len(candidates))):
        body, ns, ids = user.keyed[key]
        outcome, status, reply = attempt(http_, "POST", "/v1/memories", user.token, body, key)
        if outcome != ANSWERED:
            h.stats.add("replays_ambiguous")
            continue
        got = ids_of(reply, len(ns))
        if status != 201 or got is None:
            h.stats.add("unexpected", sample=f"replay of key {key} answered {status} {reply}")
        elif got == ids:
            h.stats.add("replays_same")
        else:
            # New memories were made and acknowledged: track them, and bind()
            # counts each canary that now has two ids as a duplicate.
            for n, mid in zip(ns, got):
                user.acknowledge(n, mid, h.stats)


def settle_maybe(h: "Harness", http_: Http, user: User):
    """An ambiguous delete is settled by the restarted server: present or gone,
    and held to that from now on."""
    for mid, n in list(user.maybe.items()):
        status, reply = fetch(http_, "GET", f"/v1/memories/{mid}", user.token)
        if status == 200 and user.matches(reply, mid, n):
            user.live[mid] = user.maybe.pop(mid)
            h.stats.add("maybe_present")
        elif status == 200:
            user.maybe.pop(mid)
            user.mark_lost(mid, h.stats, f"after an ambiguous delete it reads {reply}")
        elif status == 404:
            user.maybe.pop(mid)
            user.gone.add(mid)
            h.stats.add("maybe_gone")
        # else: left unsettled; retried after the next restart


def check_live(h: "Harness", http_: Http, user: User, rng: random.Random):
    for mid, n in list(user.live.items()):
        status, reply = fetch(http_, "GET", f"/v1/memories/{mid}", user.token)
        if status == 200 and user.matches(reply, mid, n):
            h.stats.add("verified")
        elif status in (200, 404):
            user.mark_lost(mid, h.stats, f"owner's GET answered {status} {reply}")
            continue
        else:
            h.stats.add("verify_errors", sample=f"GET {mid} by owner {user.idx}: {status} {reply}")
            continue
        check_foreign(h, http_, user, mid, rng)


def check_foreign(h: "Harness", http_: Http, user: User, mid, rng: random.Random):
    other = h.other_user(user, rng)
    status, reply = fetch(http_, "GET", f"/v1/memories/{mid}", other.token)
    if status == 404:
        h.stats.add("cross_checked")
    elif status is not None and status < 300:
        # Counted once per (reader, id), from whichever check sees it first.
        h.stats.once("leaks", (other.idx, mid),
                     f"user {other.idx} reads user {user.idx}'s {mid}: {status} {reply}")
    else:
        h.stats.add("verify_errors", sample=f"GET {mid} by user {other.idx}: {status} {reply}")


def check_deleted(h: "Harness", http_: Http, user: User):
    for mid in (user.deleted | user.gone) - user.resurrected:
        status, reply = fetch(http_, "GET", f"/v1/memories/{mid}", user.token)
        if status == 404:
            h.stats.add("deleted_checked")
        elif status == 200:
            how = "204" if mid in user.deleted else "settled as deleted"
            user.mark_resurrected(mid, h.stats, f"delete was {how}, GET answers {reply}")
        else:
            h.stats.add("verify_errors", sample=f"GET deleted {mid}: {status} {reply}")


def list_all(http_: Http, user: User):
    """Every memory of the owner's paged list: (memories, None) or (None, why)."""
    memories = []
    cursor = None
    for _ in range(10 + 2 * len(user.items) // PAGE_LIMIT):
        path = f"/v1/memories?limit={PAGE_LIMIT}" + (f"&cursor={cursor}" if cursor else "")
        status, reply = fetch(http_, "GET", path, user.token)
        if (status != 200 or not isinstance(reply, dict)
                or not isinstance(reply.get("memories"), list)):
            return None, f"{status} {reply}"
        memories.extend(reply["memories"])
        cursor = reply.get("next_cursor")
        if not cursor:
            return memories, None
    return None, "it never ends"


def check_list(h: "Harness", http_: Http, user: User):
    """The full paged list: only the owner's canaries, every live id, once."""
    memories, why = list_all(http_, user)
    if memories is None:
        h.stats.add("verify_errors", sample=f"list of user {user.idx}: {why}")
        return
    seen: set[str] = set()
    for memory in memories:
        check_listed(h, user, memory, seen)
    for mid in list(user.live):
        if mid not in seen:
            user.mark_lost(mid, h.stats, "missing from the owner's list")


def check_listed(h: "Harness", user: User, memory, seen: set):
    mid = memory.get("id") if isinstance(memory, dict) else None
    text = memory.get("text") if isinstance(memory, dict) else None
    if not isinstance(mid, str) or not isinstance(text, str):
        h.stats.add("unexpected", sample=f"list entry {memory}")
        return
    if mid in seen:
        h.stats.add("unexpected", sample=f"list of user {user.idx} has {mid} twice")
        return
    seen.add(mid)
    found = CANARY_RE.search(text)
    if not found or found.group(1) != user.run or int(found.group(2)) != user.idx:
        h.stats.once("leaks", (user.idx, mid),
                     f"user {user.idx}'s list holds {mid} {text!r}, not the owner's")
        return
    n = int(found.group(3))
    if mid in user.live:
        if text != user.items[n].text or user.live[mid] != n:
            user.mark_lost(mid, h.stats, f"listed with text {text!r}")
        return
    if mid in user.deleted or mid in user.gone:
        user.mark_resurrected(mid, h.stats, "back in the owner's list")
        return
    if mid in user.maybe or mid in user.extra or mid in user.lost:
        return
    adopt_unknown(h, user, mid, n, text)


def adopt_unknown(h: "Harness", user: User, mid, n, text):
    """An id we never got an answer for, carrying the owner's canary n."""
    item = user.items.get(n)
    if item is None or item.state == "unsent" or item.text != text:
        user.extra.add(mid)
        h.stats.add("phantoms", sample=f"user {user.idx} lists {mid} {text!r}, never stored")
    elif item.state == "ambiguous":
        # An ambiguous store that landed; from now on it must stay.
        user.acknowledge(n, mid, h.stats)
        h.stats.add("ambiguous_landed")
    else:
        # Canary n already has its id: the server stored that text twice.
        user.extra.add(mid)
        user.bind(n, mid, h.stats)


# ---------------------------------------------------------------------- logs


class LogWatch:
    """Counts new complete lines of the servers' logs since the last scan, and
    groups ERROR/WARN lines by message so that a rare one is not drowned by a
    frequent one."""

    LEVEL_RE = re.compile(r'^\S+\s+(ERROR|WARN)\b|"level":\s*"(ERROR|WARN)"')
    # Timestamps, paths, ids and numbers differ between occurrences of one message.
    NOISE = (
        (re.compile(r"^\S*\d{4}-\d\d-\d\dT\S+\s+"), ""),
        (re.compile(r"/[^\s\"',)]+"), "<path>"),
        (re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\b[0-9a-f]{10,}\b"), "<id>"),
        (re.compile(r"\d+"), "N"),
    )

    def __init__(self, stats: Stats):
        self.stats = stats
        self.offsets: dict[str, int] = {}
        self.messages: dict[str, list] = {}  # normalised -> [count, first line]

    def watch(self, path):
        self.offsets.setdefault(path, 0)

    def scan(self):
        for path, offset in self.offsets.items():
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line still being written waits
            self.offsets[path] = offset + end
            for line in data[:end].decode(errors="replace").splitlines():
                self.classify(os.path.basename(path), line)

    def classify(self, name, line):
        if "panicked" in line:
            self.stats.add("panics", sample=f"{name}: {line[:300]}")
        level = self.LEVEL_RE.search(line)
        if not level:
            return
        self.stats.add("log_errors" if "ERROR" in level.group(0) else "log_warnings")
        key = line
        for pattern, repl in self.NOISE:
            key = pattern.sub(repl, key)
        entry = self.messages.setdefault(key[:200], [0, f"{name}: {line[:400]}"])
        entry[0] += 1

    def summary(self) -> list[str]:
        """Distinct ERROR/WARN messages, most frequent first: "count x line"."""
        ranked = sorted(self.messages.values(), key=lambda e: -e[0])
        return [f"{count} x {line}" for count, line in ranked]


# ------------------------------------------------------------------ harness


class Harness:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.run_id = secrets.token_hex(4)
        self.jwt_secret = secrets.token_hex(32)
        self.server_secret = secrets.token_hex(32)
        self.prefix = f"crash{secrets.token_hex(4)}_"
        self.stats = Stats()
        self.logs = LogWatch(self.stats)
        self.tmp = tempfile.mkdtemp(prefix="cordon-crash-")
        self.data_dir = os.path.join(self.tmp, "data")
        self.users = [User(i, self.run_id, self.jwt_secret) for i in range(args.users)]
        clients = min(args.clients, args.users)
        self.groups = [self.users[t::clients] for t in range(clients)]
        self.thread_errors: list[str] = []
        self.cordon: Child | None = None
        self.cordon_port = 0
        self.qdrant: Child | None = None
        self.qdrant_grpc = 0
        self.starts = 0
        self.qdrant_starts = 0
        self.error: str | None = None

    # ---- processes

    def start_qdrant(self):
        storage = os.path.join(self.tmp, "qdrant")
        os.makedirs(storage, exist_ok=True)
        http_port, grpc_port = free_port(), free_port()
        env = clean_env(("QDRANT__",))
        env.update({
            "QDRANT__SERVICE__HOST": "127.0.0.1",
            "QDRANT__SERVICE__HTTP_PORT": str(http_port),
            "QDRANT__SERVICE__GRPC_PORT": str(grpc_port),
            "QDRANT__STORAGE__STORAGE_PATH": os.path.join(storage, "storage"),
            "QDRANT__STORAGE__SNAPSHOTS_PATH": os.path.join(storage, "snapshots"),
            "QDRANT__TELEMETRY_DISABLED": "true",
        })
        self.qdrant_starts += 1
        log = os.path.join(self.tmp, f"qdrant-{self.qdrant_starts:03d}.log")
        # cwd is its own directory so that no ./config/ of the caller's is read.
        self.qdrant = Child("qdrant", [self.args.qdrant_bin], env, log, cwd=storage)
        self.logs.watch(log)
        wait_ready(self.qdrant, http_port, self.args.qdrant_ready_timeout)
        self.qdrant_grpc = grpc_port

    def cordon_env(self, port) -> dict:
        env = clean_env(("CORDON_",))
        env.update({
            "CORDON_BIND": f"127.0.0.1:{port}",
            "CORDON_JWT_HS256_SECRET": self.jwt_secret,
            "CORDON_MODEL_DIR": self.args.model_dir,
            "CORDON_SERVER_SECRET": self.server_secret,
        })
        # Each engine refuses the other's settings.
        if self.args.qdrant_bin:
            env.update({
                "CORDON_STORE": "qdrant",
                "CORDON_QDRANT_URL": f"http://127.0.0.1:{self.qdrant_grpc}",
                "CORDON_COLLECTION_PREFIX": self.prefix,
            })
        else:
            env["CORDON_DATA_DIR"] = self.data_dir
        env.update(self.args.env)
        return env

    def start_cordon(self) -> float:
        """Starts Cordon on the data directory; seconds until it was ready."""
        for _ in range(3):  # a free port can be taken before the server binds it
            self.starts += 1
            port = free_port()
            log = os.path.join(self.tmp, f"cordon-{self.starts:03d}.log")
            child = Child("cordon", [self.args.bin, "serve"], self.cordon_env(port), log)
            self.logs.watch(log)
            try:
                ready = wait_ready(child, port, self.args.ready_timeout)
            except CannotRun:
                if not child.alive() and "Address already in use" in child.log_tail():
                    continue
                raise
            self.cordon, self.cordon_port = child, port
            return ready
        raise CannotRun("cordon found no free port three times")

    def other_user(self, user: User, rng: random.Random) -> User:
        twin = user.idx ^ 1
        if twin < len(self.users) and rng.random() < 0.5:
            return self.users[twin]
        pick = rng.randrange(len(self.users) - 1)
        return self.users[pick + (pick >= user.idx)]

    # ---- rounds

    def run(self):
        if not os.access(self.args.bin, os.X_OK):
            raise CannotRun(f"{self.args.bin} is not an executable file")
        if not os.path.isdir(self.args.model_dir):
            raise CannotRun(f"model directory {self.args.model_dir} does not exist")
        if self.args.qdrant_bin:
            if not os.access(self.args.qdrant_bin, os.X_OK):
                raise CannotRun(f"{self.args.qdrant_bin} is not an executable file")
            self.start_qdrant()
        self.start_cordon()
        qdrant_rounds = set()
        if self.args.qdrant_bin:
            count = min(self.args.qdrant_kills, self.args.kills)
            qdrant_rounds = set(self.rng.sample(range(1, self.args.kills + 1), count))
        print(f"crashloop: run {self.run_id}, {len(self.users)} users, "
              f"{len(self.groups)} clients, {self.args.kills} kills, "
              f"{'qdrant' if self.args.qdrant_bin else 'edge'} store, temp {self.tmp}",
              flush=True)
        for rnd in range(1, self.args.kills + 1):
            self.one_round(rnd, rnd in qdrant_rounds)

    def one_round(self, rnd, kill_qdrant):
        before = self.stats.snapshot()
        load = self.rng.uniform(self.args.min_run, self.args.max_run)
        stop = threading.Event()
        threads = self.run_threads(client_loop, stop, rnd)
        time.sleep(load)
        self.kill_servers(kill_qdrant)
        stop.set()
        self.join(threads, "client")
        if kill_qdrant:
            self.start_qdrant()
        ready = self.start_cordon()
        started = time.monotonic()
        self.join(self.run_threads(verify_users, None, rnd), "verify")
        took = time.monotonic() - started
        self.logs.scan()
        self.stats.add("rounds")
        self.print_round(rnd, before, load, ready, took, kill_qdrant)

    def kill_servers(self, kill_qdrant):
        """Kill -9 under load. Qdrant goes first, so that Cordon meets its
        outage mid-request before it dies itself."""
        if kill_qdrant:
            self.qdrant.kill()
            self.stats.add("qdrant_kills")
            time.sleep(self.rng.uniform(0.0, 0.3))
        if not self.cordon.alive():
            self.stats.add("unplanned_exits", sample=(
                f"cordon exited by itself with {self.cordon.popen.returncode}: "
                f"{self.cordon.log_tail(5)}"))
        self.cordon.kill()
        self.stats.add("cordon_kills")

    def run_threads(self, target, stop, rnd):
        threads = []
        per_thread = math.ceil(self.args.replays / len(self.groups))
        for t, group in enumerate(self.groups):
            seed = self.rng.getrandbits(64)
            if target is client_loop:
                a = (self, group, self.cordon_port, stop, seed, rnd)
            else:
                a = (self, group, self.cordon_port, seed, per_thread)
            thread = threading.Thread(target=target, args=a, name=f"{target.__name__}-{t}",
                                      daemon=True)
            thread.start()
            threads.append(thread)
        return threads

    def join(self, threads, what):
        # Clients see the dead server at once; a verification pass can be long
        # (two GETs per live memory), so it gets a generous bound.
        limit = self.args.timeout + 10 if what == "client" else 600 + 20 * self.args.timeout
        deadline = time.monotonic() + limit
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise CannotRun(f"a {what} thread is still running after {limit:.0f} s")
        if self.thread_errors:
            raise CannotRun("a harness thread failed:\n" + self.thread_errors[0])

    # ---- reporting

    def print_round(self, rnd, before, load, ready, took, kill_qdrant):
        now = self.stats.snapshot()
        d = {k: now[k] - before[k] for k in now}
        live = sum(len(u.live) for u in self.users)
        q = " +qdrant" if kill_qdrant else ""
        print(
            f"round {rnd:>3}/{self.args.kills}{q}: load {load:.1f}s "
            f"+{d['stores_acked']} stores (+{d['memories_acked']} mem) "
            f"+{d['deletes_acked']} deletes, {d['ambiguous']} ambiguous | "
            f"ready {ready:.1f}s | verified {d['verified']} live, "
            f"{d['deleted_checked']} deleted in {took:.1f}s ({live} live) | "
            f"lost {now['lost']} resurrected {now['resurrected']} leaks {now['leaks']} "
            f"dup {now['duplicates']} panics {now['panics']}",
            flush=True,
        )

    def report(self) -> dict:
        counts = self.stats.snapshot()
        result = {
            "ok": self.verdict() == 0,
            "run": self.run_id,
            "store": "qdrant" if self.args.qdrant_bin else "edge",
            "users": len(self.users),
            "clients": len(self.groups),
            "idempotency": self.args.idempotency,
            **counts,
            "live_at_end": sum(len(u.live) for u in self.users),
            "failure_samples": list(self.stats.samples),
            "log_messages": self.logs.summary(),
            "temp_dir": self.tmp,
        }
        if self.error:
            result["error"] = self.error
        return result

    def print_report(self, result):
        labels = [
            ("rounds", "rounds"), ("cordon_kills", "kills of cordon"),
            ("qdrant_kills", "kills of qdrant"), ("stores_acked", "stores acknowledged"),
            ("memories_acked", "memories acknowledged"),
            ("deletes_acked", "deletes acknowledged"), ("ambiguous", "ambiguous ops"),
            ("refused", "refused ops (never sent)"), ("server_errors", "5xx answers"),
            ("verified", "memories verified"), ("deleted_checked", "deletes verified"),
            ("cross_checked", "cross-user probes"), ("ambiguous_landed", "ambiguous landed"),
            ("maybe_present", "ambiguous deletes undone"),
            ("maybe_gone", "ambiguous deletes done"),
            ("live_at_end", "live at end"),
        ]
        if self.args.idempotency:
            labels += [("retries_acked", "retries acknowledged"),
                       ("retries_landed", "retries of landed stores"),
                       ("retries_ambiguous", "retries ambiguous"),
                       ("replays_same", "replays with same ids"),
                       ("replays_ambiguous", "replays ambiguous")]
        labels += [(f, f.replace("_", " ")) for f in FAIL_FIELDS]
        labels += [("log_errors", "log ERROR lines"), ("log_warnings", "log WARN lines")]
        print("\ncrashloop report")
        for key, label in labels:
            print(f"  {label + ':':<28} {result[key]}")
        for sample in result["failure_samples"]:
            print(f"  ! {sample}")
        for message in result["log_messages"][:12]:
            print(f"  log: {message}")
        if self.error:
            print(f"  error: {self.error}")
        verdict = {0: "PASS", 1: "FAIL", 2: "CANNOT RUN"}[self.verdict()]
        print(f"  verdict: {verdict}", flush=True)

    def verdict(self) -> int:
        if self.stats.failures():
            return 1
        if self.error:
            return 2
        return 0 if self.stats.snapshot()["verified"] > 0 else 1

    def cleanup(self):
        kill_all_children()
        if self.args.keep or self.verdict() != 0:
            print(f"crashloop: kept {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------- main


def parse_env(value: str):
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--env wants KEY=VALUE, got {value!r}")
    return key, val


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="kill -9 Cordon under load, restart it, and check that no "
                    "acknowledged write was lost, resurrected or leaked.")
    p.add_argument("--bin", required=True, help="the cordon binary (run as `BIN serve`)")
    p.add_argument("--model-dir", default=os.path.join(ROOT, "models"),
                   help="CORDON_MODEL_DIR (default: the repository's models/)")
    p.add_argument("--env", action="append", type=parse_env, default=[], metavar="KEY=VALUE",
                   help="extra environment for cordon (repeatable)")
    p.add_argument("--kills", type=int, default=50, help="rounds, each ending in kill -9")
    p.add_argument("--users", type=int, default=40, help="users in all (at least 2)")
    p.add_argument("--clients", type=int, default=4, help="client threads")
    p.add_argument("--min-run", type=float, default=1.0, help="least seconds of load per round")
    p.add_argument("--max-run", type=float, default=4.0, help="most seconds of load per round")
    p.add_argument("--delete-share", type=float, default=0.3,
                   help="share of operations that delete (the rest store)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request")
    p.add_argument("--ready-timeout", type=float, default=60.0,
                   help="seconds for cordon's /readyz to answer 200")
    p.add_argument("--qdrant-bin", help="run on a Qdrant server started from this binary")
    p.add_argument("--qdrant-kills", type=int, default=5,
                   help="rounds that also kill -9 Qdrant (with --qdrant-bin)")
    p.add_argument("--qdrant-ready-timeout", type=float, default=120.0,
                   help="seconds for Qdrant's /readyz to answer 200")
    p.add_argument("--idempotency", action="store_true",
                   help="send Idempotency-Key; retry ambiguous stores after each restart")
    p.add_argument("--replays", type=int, default=3,
                   help="acknowledged stores re-sent per round with their key (--idempotency)")
    p.add_argument("--seed", type=int, help="seed for the harness's random choices")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data and logs)")
    args = p.parse_args(argv)
    if args.users < 2 or args.clients < 1 or args.kills < 1:
        p.error("--users must be at least 2, --clients and --kills at least 1")
    if not 0 < args.min_run <= args.max_run:
        p.error("need 0 < --min-run <= --max-run")
    if not 0 <= args.delete_share < 1:
        p.error("--delete-share must be in [0, 1)")
    args.bin = os.path.abspath(args.bin)
    args.model_dir = os.path.abspath(args.model_dir)
    if args.qdrant_bin:
        args.qdrant_bin = os.path.abspath(args.qdrant_bin)
    args.env = dict(args.env)
    return args


def _exit_on_signal(signum, _frame):
    # Turns SIGTERM/SIGHUP into SystemExit, so the finally blocks kill the servers.
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    harness = Harness(args)
    try:
        harness.run()
    except CannotRun as e:
        harness.error = str(e)
        print(f"crashloop: cannot run: {e}", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        harness.error = "interrupted"
    finally:
        kill_all_children()
        try:
            harness.logs.scan()  # the last server's log, up to its death
        except Exception:  # noqa: BLE001
            pass
        result = harness.report()
        harness.print_report(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
                f.write("\n")
        harness.cleanup()
    return harness.verdict()


if __name__ == "__main__":
    sys.exit(main())
