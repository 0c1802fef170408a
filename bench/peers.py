"""The peers consent-ivr is measured against, each running the same consent dialogue.

``python -m bench.peers raw PORT TEMPLATES.json`` — the ceiling: the smallest asyncio
FastAGI responder that sends the same commands, in the same order, branching on the same
digits, with no database, no logging, no parsing beyond ``result=``.

``python -m bench.peers raw-db PORT TEMPLATES.json`` — the same responder committing each
decision with consent-ivr's ledger write (as ``panoramisk-db`` below): the ceiling for a
server that stores what the caller decided. ``-uvloop`` after any kind runs it on uvloop.

``python -m bench.peers panoramisk PORT TEMPLATES.json`` — the peer most Python users
would pick:
panoramisk 1.4's ``panoramisk.fast_agi.Application`` with an ``async`` route doing the
same commands (no database either: it stands for the framework's cost only).

``python -m bench.peers panoramisk-db PORT TEMPLATES.json`` — the same application
committing each decision with the very ledger write consent-ivr makes
(``agi.ledger.ledger.Ledger.record_decision`` over asyncpg, ``$DATABASE_URL``) before it sets
``CONSENT_EVENT_ID``: what a panoramisk user would have to add to do the same job.

Workarounds panoramisk 1.4 needed (see docs/benchmarks.md):

* routes match the whole ``agi_network_script``, query string included, so the route is
  registered as ``consent?purpose=marketing-calls``;
* a plain (sync) route handler cannot be registered on Python 3.11:
  ``add_route`` calls ``asyncio.coroutine``, which no longer exists
  (``AttributeError: module 'asyncio' has no attribute 'coroutine'``); async handlers
  never touch it, so the Application/Request path works with ``async def`` routes;
* ``Application()`` calls ``asyncio.get_event_loop()``: built inside the running loop;
* it reads replies with one ``readline()`` each; an unsolicited ``HANGUP`` line would be
  taken as the reply to the next command (the dialogues here never hang up early).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import sys
from itertools import count
from pathlib import Path
from typing import Any

from bench.loadgen import loop_factory

# The dialogue is not hand-copied: the benchmark records consent-ivr's own commands for
# each scripted call (bench.loadgen.record) and passes them here as a decision tree —
# send this command; on the reply's ``result=`` value, go to that node. Every peer walks
# the same tree, so all three servers send byte-identical commands (the load generator
# checks each line), and a change to the consent flow cannot leave the peers behind.

EVENT_ID_CMD = 'SET VARIABLE "CONSENT_EVENT_ID" "'


def build_tree(templates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge the recorded dialogues into ``[{"cmd": str, "next": {result: node}}]``."""
    nodes: list[dict[str, Any]] = []
    root: int | None = None
    for tpl in templates:
        parent: tuple[int, str] | None = None
        for cmd, reply in zip(tpl["commands"], tpl["replies"], strict=True):
            cmd = cmd.rstrip("\n")
            if cmd.startswith(EVENT_ID_CMD) and cmd != EVENT_ID_CMD + '"':
                cmd = EVENT_ID_CMD + '{id}"'
            if parent is None:
                here = root
            else:
                here = nodes[parent[0]]["next"].get(parent[1])
            if here is None:
                here = len(nodes)
                nodes.append({"cmd": cmd, "next": {}})
                if parent is None:
                    root = here
                else:
                    nodes[parent[0]]["next"][parent[1]] = here
            elif nodes[here]["cmd"] != cmd:
                raise ValueError(f"dialogues diverge without a reply to tell: {cmd!r}")
            m = re.search(r"^200 result=(\S*)", reply, re.M)
            parent = (here, m.group(1) if m else "")
    assert root == 0
    for node in nodes:  # which decision each commit stores: the next command says it
        if "{id}" in node["cmd"]:
            after = [nodes[i]["cmd"] for i in node["next"].values()]
            node["decision"] = "opt_out" if any("opted_out" in c for c in after) else "opt_in"
    return nodes


_event_ids = count(1)


async def consent_dialogue(tree: list[dict[str, Any]], send: Any, commit: Any = None) -> None:
    """Walk the tree: ``await send(command) -> result string``.

    ``commit(decision) -> event id``, when given, stores the decision first (the
    panoramisk-db variant); otherwise a counter stands in for the event id.
    """
    node: int | None = 0
    while node is not None:
        cmd = tree[node]["cmd"]
        if "{id}" in cmd:
            decision = tree[node].get("decision", "opt_in")
            event_id = await commit(decision) if commit else next(_event_ids)
            cmd = cmd.replace("{id}", str(event_id))
        result = await send(cmd)
        node = tree[node]["next"].get(result)


# --------------------------------------------------------------------------- raw asyncio

_RESULT = re.compile(rb"^200 result=(\S*)")


async def raw_session(tree: list[dict[str, Any]], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, store: Any = None) -> None:
    try:
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\n", b""):
            if store is not None:  # raw-db: the commit needs uniqueid, caller ID, channel
                key, _, value = line.decode(errors="replace").rstrip("\n").partition(": ")
                headers[key] = value

        async def send(cmd: str) -> str:
            writer.write(cmd.encode() + b"\n")
            while True:
                line = await reader.readline()
                if not line:
                    raise ConnectionError("hung up")
                m = _RESULT.match(line)
                if m:
                    return m.group(1).decode()
                if not line.startswith(b"100 ") and line != b"HANGUP\n":
                    raise ConnectionError(line.decode(errors="replace"))

        commit = None
        if store is not None:
            async def commit(decision: str) -> int:
                return int(await store(headers, decision))

        await consent_dialogue(tree, send, commit)
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve_raw(port: int, tree: list[dict[str, Any]], with_db: bool = False) -> None:
    store = await _ledger_commit() if with_db else None
    server = await asyncio.start_server(functools.partial(raw_session, tree, store=store),
                                        "127.0.0.1", port, backlog=2048)
    print(f"raw listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- panoramisk


async def _ledger_commit() -> Any:
    """The same ledger write consent-ivr makes (agi.ledger.ledger.Ledger.record_decision)."""
    import os
    from datetime import UTC, datetime

    from agi.ledger.database import connect_pool
    from agi.ledger.ledger import Ledger
    from agi.ledger.records import ConsentDecision

    pool = await connect_pool(os.environ["DATABASE_URL"], min_size=2, max_size=10)
    ledger = Ledger(pool)

    async def commit(headers: Any, decision: str) -> int:
        uniqueid = headers.get("agi_uniqueid", "")
        event_id, _ = await ledger.record_decision(ConsentDecision(
            number_e164=headers.get("agi_callerid", ""), organisation="Example Energy Ltd",
            purpose="marketing-calls", decision=decision, method="ivr_inbound",
            evidence_strength="caller_id", decided_at=datetime.now(UTC),
            idempotency_key=f"{uniqueid}|{headers.get('agi_channel', '')}|decision",
            instance="panoramisk-peer", uniqueid=uniqueid,
            callerid_num=headers.get("agi_callerid"),
        ))
        return event_id

    return commit


async def serve_panoramisk(port: int, tree: list[dict[str, Any]], with_db: bool = False) -> None:
    from panoramisk.fast_agi import Application

    app = Application()
    store = await _ledger_commit() if with_db else None

    async def consent(request: Any) -> None:
        async def send(cmd: str) -> str:
            res = await request.send_command(cmd)
            if "error" in res:
                raise ConnectionError(res.get("msg"))
            return str(res["result"][0])

        commit = None
        if store is not None:
            async def commit(decision: str) -> int:
                return int(await store(request.headers, decision))

        await consent_dialogue(tree, send, commit)

    app.add_route("consent?purpose=marketing-calls", consent)
    server = await asyncio.start_server(app.handler, "127.0.0.1", port, backlog=2048)
    print(f"panoramisk listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind, port, templates = argv[0], int(argv[1]), Path(argv[2])
    tree = build_tree(json.loads(templates.read_text())["templates"])
    import logging

    logging.basicConfig(level=logging.WARNING)  # panoramisk logs every request at INFO
    # "raw-uvloop", "panoramisk-uvloop": the same peer on uvloop, consent-ivr's own loop
    kind, on_uvloop, _ = kind.partition("-uvloop")
    factory = loop_factory("uvloop") if on_uvloop else None
    with asyncio.Runner(loop_factory=factory) as runner:
        if kind in ("raw", "raw-db"):
            runner.run(serve_raw(port, tree, with_db=kind == "raw-db"))
        else:
            runner.run(serve_panoramisk(port, tree, with_db=kind == "panoramisk-db"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
