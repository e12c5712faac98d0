#!/usr/bin/env python3
"""The Python client in clients/python against a real Cordon: every method,
two users who must not see each other, errors, idempotent retries, paging,
the async client, and the README's agent-loop example.

    tests/sdk/python_client.py --bin <path to cordon>

Uses the client from the checkout (clients/python/src is put on sys.path),
so nothing needs installing but httpx. Starts `cordon serve` on a free
loopback port with a temporary data directory, mints tokens with
`cordon token`, checks, stops the server. Exits non-zero on the first failed
check. Run by scripts/sdk-tests.
"""

import argparse
import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

from cordon_server import CordonServer, check

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SRC = ROOT / "clients" / "python" / "src"
EXAMPLE = ROOT / "clients" / "python" / "examples" / "agent_loop.py"
README = ROOT / "clients" / "python" / "README.md"
sys.path.insert(0, str(CLIENT_SRC))

import httpx  # noqa: E402

from cordon_client import AsyncCordon, Cordon, CordonError, Memory, Page  # noqa: E402

DIMENSIONS = 384
UUID_LEN = 36


def raises(fn, status: int, code: str) -> bool:
    """Whether `fn()` raises CordonError with this status and code."""
    try:
        fn()
    except CordonError as e:
        if e.status == status and e.code == code and e.message:
            return True
        print(f"  got {e!r}", file=sys.stderr)
        return False
    print("  no error raised", file=sys.stderr)
    return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the cordon binary")
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()

    print(f"httpx {httpx.__version__}")
    check_offline()
    with CordonServer(args.bin, args.model_dir, {"CORDON_AUDIT": "off"}) as server:
        alice_token = server.token("acme", "alice")
        bob_token = server.token("acme", "bob")
        with Cordon(server.base_url, alice_token) as alice, Cordon(
            server.base_url, bob_token
        ) as bob:
            check_memory_api(server.base_url, alice, bob)
            check_curation(alice, bob)
        asyncio.run(check_async(server.base_url, server.token("acme", "dave")))
        check_example(server.base_url, server.token("acme", "carol"))


def check_memory_api(base_url: str, alice: Cordon, bob: Cordon) -> None:
    peanuts = "I am allergic to peanuts"
    first = alice.remember(peanuts, {"source": "chat"})
    check(isinstance(first, str) and len(first) == UUID_LEN, "remember returns an id")

    found = alice.recall("what can I not eat?", limit=3)
    check(
        bool(found) and found[0].id == first and found[0].text == peanuts,
        "recall finds the memory by meaning",
    )
    check(
        isinstance(found[0].score, float) and 0 < found[0].score <= 1,
        f"recall gives a score ({found[0].score})",
    )
    check(
        found[0].metadata == {"source": "chat"} and found[0].created_at > 0,
        "recall returns metadata and created_at",
    )

    texts = [
        "The team standup moved to 9:30",
        "My sister lives in Lisbon",
        "I prefer window seats on flights",
    ]
    many = alice.remember_many(
        [texts[0], {"text": texts[1], "metadata": {"kind": "family"}}, texts[2]]
    )
    check(len(many) == 3 and len(set(many)) == 3, "remember_many returns three ids")
    got = [alice.get(i) for i in many]
    check(
        [m.text if m else None for m in got] == texts,
        "remember_many's ids are in the order of the items",
    )
    family = alice.recall("where does my family live?", filter={"kind": "family"})
    check(
        [m.text for m in family] == [texts[1]],
        "recall with a metadata filter returns only the matching memory",
    )
    check(
        alice.recall("what can I not eat?", limit=1)[0].text == peanuts
        and len(alice.recall("anything", limit=2)) == 2,
        "recall honours limit",
    )
    check(
        alice.recall("what can I not eat?", min_score=0.99) == [],
        "recall honours min_score",
    )

    own = alice.get(first)
    check(
        isinstance(own, Memory) and own.text == peanuts and own.score is None,
        "get of an own id returns the memory, without a score",
    )
    check(bob.get(first) is None, "get of alice's id with bob's client is None")
    check(alice.get(str(uuid.uuid4())) is None, "get of an unknown id is None")
    check(bob.forget(first) is False, "forget of alice's id by bob is False")
    check(alice.get(first) is not None, "alice still has it")

    bob_text = "Bob goes hiking every weekend"
    bob_id = bob.remember(bob_text)
    alice_texts = {peanuts, *texts}
    seen: set[str] = set()
    for query in [peanuts, *texts, "what can I not eat?", "hiking", "anything"]:
        seen.update(m.text for m in bob.recall(query, limit=100))
    check(
        seen == {bob_text} and not seen & alice_texts,
        "bob's recall returns only bob's memories, never alice's",
    )
    check(
        all(m.text != bob_text for m in alice.recall("hiking", limit=100)),
        "alice's recall never returns bob's",
    )

    # Idempotency: the same key and body give the same id, nothing new.
    key = str(uuid.uuid4())
    call = "Call mom on Sunday"
    once = alice.remember(call, idempotency_key=key)
    again = alice.remember(call, idempotency_key=key)
    check(once == again, "a replay with the same idempotency key returns the same id")
    check(
        sum(1 for m in alice.iter_all() if m.text == call) == 1,
        "the replay stored nothing new",
    )
    check(
        raises(
            lambda: alice.remember("something else", idempotency_key=key),
            422,
            "idempotency_key_reused",
        ),
        "the same key with another body raises CordonError 422 idempotency_key_reused",
    )
    check(
        bob.remember(call, idempotency_key=key) != once,
        "another user's same key makes their own memory",
    )
    batch_key = str(uuid.uuid4())
    batch = ["Pay the rent on the 1st", "Water the plants on Friday"]
    ids = alice.remember_many(batch, idempotency_key=batch_key)
    check(
        alice.remember_many(batch, idempotency_key=batch_key) == ids,
        "remember_many replays with the same ids",
    )

    # Paging: 7 memories in pages of 2.
    expected = {first, *many, once, *ids}
    pages, cursor = 0, None
    listed: list[str] = []
    while True:
        page = alice.list(limit=2, cursor=cursor)
        check(isinstance(page, Page) and len(page.memories) <= 2, f"page {pages + 1} holds at most 2")
        pages += 1
        listed.extend(m.id for m in page.memories)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    check(pages >= 4, f"list pages by limit=2 and next_cursor ({pages} pages for 7)")
    check(
        len(listed) == len(expected) and set(listed) == expected,
        "list's pages hold every memory exactly once",
    )
    walked = [m.id for m in alice.iter_all(page_size=2)]
    check(
        len(walked) == len(expected) and set(walked) == expected,
        "iter_all(page_size=2) yields every memory exactly once",
    )
    check(
        sorted(m.id for m in alice.iter_all()) == sorted(expected),
        "iter_all with the default page size too",
    )

    # Errors.
    with Cordon(base_url, "not-a-token") as stranger:
        check(
            raises(lambda: stranger.recall("anything"), 401, "unauthorized"),
            "a bad token raises CordonError 401 unauthorized",
        )
    check(
        raises(lambda: alice.remember(""), 422, "invalid_request"),
        "an empty text raises CordonError 422 invalid_request",
    )
    check(
        raises(lambda: alice.list(limit=0), 422, "invalid_request"),
        "limit=0 raises CordonError 422",
    )
    check(
        raises(lambda: alice.get("not-a-uuid"), 400, "invalid_path"),
        "a malformed id raises CordonError 400 invalid_path",
    )

    vectors = alice.embed(["The cat sits on the mat", "A feline is resting on a rug"])
    check(
        len(vectors) == 2 and all(len(v) == DIMENSIONS for v in vectors),
        "embed returns one 384-dim vector per text",
    )
    check(
        len(alice.embed("one text")) == 1 and isinstance(vectors[0][0], float),
        "embed takes a single string too",
    )

    exported = alice.export()
    check(
        sorted(m.id for m in exported) == sorted(expected)
        and all(isinstance(m, Memory) for m in exported),
        "export returns every memory",
    )

    check(alice.forget(once) is True, "forget of an own id is True")
    check(alice.get(once) is None and alice.forget(once) is False, "then it is gone")
    expected.discard(once)

    log = alice.access_log(limit=5)
    check(
        len(log.entries) == 5 and log.next is not None
        and [e.action for e in log.entries[:2]] == ["delete", "export"]
        and all(e.via == "http" for e in log.entries),
        "access_log pages alice's own log, newest first",
    )
    older = alice.access_log(limit=5, before=log.next)
    check(older.entries and older.entries[0].at <= log.entries[-1].at, "access_log's next pages back")
    check(all(e.token != log.entries[0].token for e in bob.access_log(limit=100).entries),
          "bob's access log holds nothing of alice's token")

    erased = alice.erase_all_receipt()
    check(erased.deleted == len(expected) and erased.receipt.count(".") == 2,
          f"erase_all_receipt returns the count ({erased.deleted}) and a signed receipt")
    check([e.action for e in alice.access_log().entries] == ["erase"],
          "after the erase alice's access log holds the erase alone")
    check(
        alice.list().memories == [] and list(alice.iter_all()) == [] and alice.export() == [],
        "after erase_all, list, iter_all and export are empty",
    )
    check(
        bob.get(bob_id) is not None and len(list(bob.iter_all())) == 2,
        "bob's memories survive alice's erase",
    )


def check_curation(alice: Cordon, bob: Cordon) -> None:
    """Update, expiry, filters and duplicates, through the client."""
    import time

    first = alice.remember("Alice's gym locker is 112", {"kind": "locker", "floor": 2})
    updated = alice.update(first, text="Alice's gym locker is 7719", metadata={"floor": None})
    check(
        updated.id == first and updated.version == 2 and updated.metadata == {"kind": "locker"},
        "update changes text, merges metadata (None removes a key) and bumps the version",
    )
    found = alice.recall("which locker number", limit=1)
    check(found[0].text == "Alice's gym locker is 7719", "the updated text is what recall finds")
    check(
        raises(lambda: alice.update(first, text="stale", if_version=1), 412, "precondition_failed"),
        "an update at a stale version raises 412 precondition_failed",
    )
    check(
        raises(lambda: bob.update(first, text="bob's"), 404, "not_found"),
        "bob cannot update alice's memory (404)",
    )
    replaced = alice.update(first, metadata={"only": True}, replace_metadata=True, if_version=2)
    check(replaced.metadata == {"only": True} and replaced.version == 3, "replace_metadata replaces")

    soon = alice.remember("Alice's table is booked for tonight", expires_at=int(time.time() * 1000) + 4000)
    kept = alice.remember("Alice prefers aisle seats", ttl_seconds=3600)
    never = alice.remember("Alice was born in Lisbon", expires_at=None)
    got = alice.get(soon)
    check(got is not None and got.expires_at is not None, "expires_at is stored and shown")
    check(alice.get(never).expires_at is None, "expires_at=None stores a memory that never expires")
    time.sleep(max(0.0, (got.expires_at - time.time() * 1000) / 1000) + 0.1)
    check(alice.get(soon) is None, "an expired memory is gone from get")
    texts = [m.text for m in alice.iter_all()]
    check(
        "Alice's table is booked for tonight" not in texts and alice.get(kept) is not None,
        "an expired memory is gone from the list; a later one stays",
    )

    for price, shop in ((12, "north"), (30, "south"), (55, "east")):
        alice.remember(f"Alice's order at {shop} cost {price}", {"price": price, "shop": shop})
    ranged = alice.recall("order cost", filter={"price": {"gte": 12, "lt": 55}})
    check(
        sorted(m.metadata["price"] for m in ranged) == [12, 30],
        "recall with a numeric range",
    )
    any_of = alice.list(filter={"shop": {"in": ["north", "east"]}})
    check(
        sorted(m.metadata["shop"] for m in any_of.memories) == ["east", "north"],
        "list with an any-of filter",
    )
    later = alice.recall("order cost", created_after=replaced.created_at + 1, filter={"price": {"gt": 0}})
    check(len(later) == 3, "recall with created_after")

    code = alice.recall("A-88213", mode="keyword")
    check(code == [], "a keyword recall of an unknown code finds nothing")
    booked = alice.remember("The blue kettle from last week's delivery was order A-88213")
    check([m.id for m in alice.recall("A-88213", mode="keyword")] == [booked], "recall with mode=keyword")

    dup = alice.remember("Alice prefers aisle seats.", duplicate_threshold=0.9)
    check(dup == kept, "a near-duplicate returns the existing memory's id")


async def check_async(base_url: str, token: str) -> None:
    async with AsyncCordon(base_url, token) as dave:
        first = await dave.remember("Dave drinks his coffee black", {"n": 1})
        ids = await dave.remember_many(["Dave plays the cello", "Dave's cat is called Miso"])
        found = await dave.recall("how does dave take his coffee?", limit=1)
        check(
            [m.id for m in found] == [first] and found[0].score is not None,
            "async: remember and recall",
        )
        got = await dave.get(ids[1])
        check(got is not None and got.text == "Dave's cat is called Miso", "async: get")
        check(await dave.get(str(uuid.uuid4())) is None, "async: get of an unknown id is None")
        walked = [m.id async for m in dave.iter_all(page_size=2)]
        check(sorted(walked) == sorted([first, *ids]), "async: iter_all pages through all")
        check(len((await dave.list(limit=2)).memories) == 2, "async: list")
        check(len((await dave.embed(["x"]))[0]) == DIMENSIONS, "async: embed")
        check(len(await dave.export()) == 3, "async: export")
        check(await dave.forget(first) is True and await dave.forget(first) is False, "async: forget")
        try:
            await dave.remember("   ")
            check(False, "async: a blank text raises CordonError 422")
        except CordonError as e:
            check(e.status == 422 and e.code == "invalid_request", "async: a blank text raises CordonError 422")
        check(len((await dave.access_log()).entries) > 0, "async: access_log")
        check(await dave.erase_all() == 2, "async: erase_all")
    async with AsyncCordon(base_url, "not-a-token") as stranger:
        try:
            await stranger.list()
            check(False, "async: a bad token raises CordonError 401")
        except CordonError as e:
            check(e.status == 401 and e.code == "unauthorized", "async: a bad token raises CordonError 401")


def check_example(base_url: str, token: str) -> None:
    source = EXAMPLE.read_text()
    check(source.strip() in README.read_text(), "the README shows examples/agent_loop.py verbatim")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORDON_")}
    env.update(CORDON_URL=base_url, CORDON_TOKEN=token, PYTHONPATH=str(CLIENT_SRC))
    command = [sys.executable, str(EXAMPLE)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    print("\n".join("  | " + line for line in run.stdout.splitlines()))
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
    check(run.returncode == 0, "the agent-loop example runs")
    turns = run.stdout.split("user: ")[1:]
    check(len(turns) == 3, "the example handles three messages")
    check("remembered" not in turns[0], "the first message recalls nothing (a new user)")
    check("remembered" not in turns[1], "the second recalls nothing relevant (min_score)")
    check(
        "I am allergic to peanuts" in turns[2] and "standup moved to 9:30" in turns[2],
        "the last message recalls both earlier memories",
    )
    with Cordon(base_url, token) as carol:
        stored = sorted(m.text for m in carol.iter_all())
    check(len(stored) == 3, "the example remembered each message")


def check_offline() -> None:
    """What a server cannot be made to show on demand: the headers the client
    sends, and the retry rule, with a scripted transport."""
    sent: list[httpx.Request] = []
    script: list[httpx.Response] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return script.pop(0) if script else httpx.Response(500)

    def busy(code: str = "overloaded", status: int = 503, after: str = "0") -> httpx.Response:
        return httpx.Response(
            status,
            json={"error": {"code": code, "message": "retry shortly"}},
            headers={"Retry-After": after},
        )

    created = httpx.Response(201, json={"ids": ["0199e0b2-0000-7000-8000-000000000001"]})
    client = Cordon("http://cordon.test/prefix/", "tok-123", transport=httpx.MockTransport(handler))

    script[:] = [created]
    client.remember("hello", {"a": 1})
    request = sent[-1]
    check(
        request.headers["authorization"] == "Bearer tok-123"
        and str(request.url) == "http://cordon.test/prefix/v1/memories",
        "the token goes in the Authorization header, paths join the base URL",
    )
    body = request.content.decode()
    check(
        "user" not in body and "owner" not in body and "idempotency-key" not in request.headers,
        "no user id is sent, and no Idempotency-Key unless asked",
    )

    sent.clear()
    script[:] = [busy(), created]
    check(
        raises(lambda: client.remember("hello"), 503, "overloaded") and len(sent) == 1,
        "a store without an idempotency key is not retried",
    )
    sent.clear()
    script[:] = [busy(), busy("rate_limited", 429), created]
    client.remember("hello", idempotency_key="k-1")
    check(
        len(sent) == 3 and all(r.headers["idempotency-key"] == "k-1" for r in sent),
        "a store with an idempotency key is retried on 503 and 429, with the same key",
    )
    sent.clear()
    script[:] = [busy(), busy(), busy()]
    try:
        client.get("0199e0b2-0000-7000-8000-000000000001")
        check(False, "retries stop after max_retries")
    except CordonError as e:
        check(
            len(sent) == 3 and e.status == 503 and e.retry_after == 0.0,
            "a read is retried max_retries (2) times, then raises with retry_after",
        )
    sent.clear()
    script[:] = [busy("locked_out", 429, "300")]
    check(
        raises(lambda: client.list(), 429, "locked_out") and len(sent) == 1,
        "a Retry-After past max_retry_wait is not waited for",
    )
    sent.clear()
    script[:] = [httpx.Response(502, text="Bad Gateway")]
    check(
        raises(lambda: client.export(), 502, "http_error") and len(sent) == 1,
        "an answer not in the server's error shape raises CordonError http_error",
    )
    script[:] = [httpx.Response(200, text='{"memories": [')]
    check(
        raises(lambda: client.export(), 200, "invalid_response"),
        "a cut-short export raises CordonError invalid_response",
    )
    client.close()


if __name__ == "__main__":
    main()
