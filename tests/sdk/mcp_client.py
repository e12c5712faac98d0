#!/usr/bin/env python3
"""The official `mcp` Python package (its streamable HTTP client) against a
real Cordon at /mcp: two users, each with their own bearer token, store and
recall through the tools, and neither ever sees the other's memories.

    tests/sdk/mcp_client.py --bin <path to cordon>

Exits non-zero on the first failed check. Run by scripts/sdk-tests.
"""

import argparse
import asyncio
import time
import json

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from cordon_server import CordonServer, check


class Agent:
    """One MCP connection with one user's token."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    async def __aenter__(self) -> "Agent":
        self._http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"})
        await self._http.__aenter__()
        self._transport = streamable_http_client(self.url, http_client=self._http)
        read, write = (await self._transport.__aenter__())[:2]
        self._session = ClientSession(read, write)
        self.session = await self._session.__aenter__()
        self.info = await self.session.initialize()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._session.__aexit__(*exc)
        await self._transport.__aexit__(*exc)
        await self._http.__aexit__(*exc)

    async def call(self, tool: str, arguments: dict):
        """The tool's result: (is_error, structured content or text)."""
        result = await self.session.call_tool(tool, arguments)
        if result.is_error:
            return True, " ".join(c.text for c in result.content if hasattr(c, "text"))
        return False, result.structured_content


async def run(base_url: str, alice_token: str, bob_token: str) -> None:
    url = f"{base_url}/mcp"
    async with Agent(url, alice_token) as alice, Agent(url, bob_token) as bob:
        check(alice.info.server_info.name == "cordon", "initialize names the server")

        tools = {t.name: t for t in (await alice.session.list_tools()).tools}
        check(sorted(tools) == ["forget", "list_memories", "recall", "remember", "update_memory"],
              f"the five memory tools are listed ({sorted(tools)})")
        named = [(t, p) for t in tools.values() for p in t.input_schema.get("properties", {})
                 if p in ("user", "user_id", "owner", "sub", "tenant")]
        check(not named, "no tool argument can name a user")

        prompts = [p.name for p in (await alice.session.list_prompts()).prompts]
        check("use-memory" in prompts, "the use-memory prompt is listed")
        prompt = await alice.session.get_prompt("use-memory")
        text = prompt.messages[0].content.text
        check("recall" in text and "remember" in text, "the prompt tells an agent how to use the tools")

        facts = ["I am allergic to peanuts", "My daughter is called Maya",
                 "I prefer window seats on flights"]
        ids = []
        for fact in facts:
            failed, out = await alice.call("remember", {"text": fact, "metadata": {"who": "alice"}})
            check(not failed and "id" in out, f"alice remembers: {fact}")
            ids.append(out["id"])
        failed, out = await bob.call("remember", {"text": "I am allergic to shellfish"})
        check(not failed, "bob remembers his own allergy")

        failed, out = await alice.call("recall", {"query": "what food must I avoid?", "limit": 2})
        texts = [m["text"] for m in out["memories"]]
        check(not failed and texts[0] == "I am allergic to peanuts",
              f"alice recalls her allergy first ({texts})")
        check(all(m["score"] is not None for m in out["memories"]), "recall gives scores")

        failed, out = await bob.call("recall", {"query": "allergic to peanuts", "limit": 10})
        texts = [m["text"] for m in out["memories"]]
        check(not failed and texts == ["I am allergic to shellfish"],
              f"bob's recall returns only bob's memory ({texts})")

        # An argument naming another user is not read: bob is still bob.
        failed, out = await bob.call("recall", {"query": "peanuts", "user_id": "alice", "owner": "alice"})
        check(not failed, f"a recall with extra arguments still runs ({out})")
        texts = [m["text"] for m in out["memories"]]
        check(texts == ["I am allergic to shellfish"],
              f"extra user arguments do not widen bob's scope ({texts})")

        failed, out = await bob.call("forget", {"id": ids[0]})
        check(failed and "not_found" in out, f"bob cannot forget alice's memory ({out})")
        failed, out = await alice.call("list_memories", {"limit": 2})
        check(not failed and len(out["memories"]) == 2 and out.get("next_cursor"),
              "alice lists a first page of two")
        failed, rest = await alice.call("list_memories", {"limit": 2, "cursor": out["next_cursor"]})
        listed = [m["text"] for m in out["memories"] + rest["memories"]]
        check(sorted(listed) == sorted(facts) and "next_cursor" not in rest,
              "alice's pages hold her three memories, still all there")

        failed, out = await bob.call("list_memories", {})
        check([m["text"] for m in out["memories"]] == ["I am allergic to shellfish"],
              "bob's list holds only his memory")

        failed, out = await alice.call("forget", {"id": ids[2]})
        check(not failed and out["id"] == ids[2], "alice forgets one of hers")
        failed, out = await alice.call("recall", {"query": "window seat on a plane"})
        check(all(m["id"] != ids[2] for m in out["memories"]), "a forgotten memory is not recalled")

        failed, out = await alice.call("remember", {"text": "   "})
        check(failed and "invalid_request" in out, "a blank memory is refused with the API's code")

        # Curation: update in place, expiry, filters, duplicates.
        failed, out = await alice.call("update_memory", {"id": ids[1], "text": "My daughter is called Maia"})
        check(not failed and out["version"] == 2 and out["text"] == "My daughter is called Maia",
              f"alice corrects a memory in place ({out})")
        failed, out = await alice.call("recall", {"query": "what is my daughter's name", "limit": 1})
        check(out["memories"][0]["text"] == "My daughter is called Maia", "recall finds the corrected text")
        failed, out = await alice.call("update_memory", {"id": ids[1], "text": "stale", "version": 1})
        check(failed and "precondition_failed" in out, f"an update at a stale version is refused ({out})")
        failed, out = await bob.call("update_memory", {"id": ids[1], "text": "bob's now"})
        check(failed and "not_found" in out, "bob cannot update alice's memory")
        now_ms = int(time.time() * 1000)
        failed, out = await alice.call("remember", {"text": "My hotel room is 512", "expires_at": now_ms + 4000})
        check(not failed, "alice remembers something that expires")
        await asyncio.sleep(max(0.0, (now_ms + 4000) / 1000 - time.time()) + 0.1)
        failed, out = await alice.call("recall", {"query": "hotel room number"})
        check(all("512" not in m["text"] for m in out["memories"]), "an expired memory is not recalled")
        failed, out = await alice.call("list_memories", {"filter": {"who": {"in": ["alice"]}}})
        check(not failed and len(out["memories"]) == 2, f"list_memories takes a filter ({out})")
        failed, out = await alice.call("recall", {"query": "daughter", "created_after": now_ms + 10**7})
        check(not failed and out["memories"] == [], "recall takes created_after")
        failed, out = await alice.call("remember", {"text": "I am allergic to peanuts!", "duplicate_threshold": 0.9})
        check(not failed and out["id"] == ids[0] and out.get("duplicate") is True,
              f"a near-duplicate is not stored again ({out})")

    # Every tool call is in the caller's access log, through `mcp`, and in
    # nobody else's.
    async with httpx2.AsyncClient() as http:
        r = await http.get(f"{base_url}/v1/access-log?limit=100", headers={"Authorization": f"Bearer {alice_token}"})
        mine = r.json()["entries"]
        tools = {e["action"] for e in mine if e["via"] == "mcp"}
        check(r.status_code == 200 and {"remember", "recall", "update_memory", "list_memories"} <= tools,
              f"alice's access log holds her tool calls ({sorted(tools)})")
        check("peanuts" not in r.text, "the access log holds no memory text")
        r = await http.get(f"{base_url}/v1/access-log?limit=100", headers={"Authorization": f"Bearer {bob_token}"})
        theirs = r.json()["entries"]
        check(all(e["token"] != mine[0]["token"] for e in theirs),
              "bob's access log holds nothing of alice's token")

    # A wrong token never reaches the tools: the HTTP answer is the API's 401.
    async with httpx2.AsyncClient() as http:
        r = await http.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers={"Authorization": "Bearer nope",
                                     "Accept": "application/json, text/event-stream"})
        check(r.status_code == 401 and r.json()["error"]["code"] == "unauthorized",
              "a bad token gets 401 before any tool runs")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True, help="the cordon binary")
    parser.add_argument("--model-dir", default="models")
    args = parser.parse_args()
    with CordonServer(args.bin, args.model_dir) as server:
        asyncio.run(run(server.base_url, server.token("acme", "alice"), server.token("acme", "bob")))


if __name__ == "__main__":
    main()
