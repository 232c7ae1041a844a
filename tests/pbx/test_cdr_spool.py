"""The CDR spool replayed into a real (SQLite) database: in order, each call once, even
when a replay is repeated because the node died before it could empty the spool."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from pbxwarden.pbx.cdr import CdrWriter
from pbxwarden.store.db import Store

OPEN = {
    "call_id": "abc@127.0.0.1",
    "tenant": "default",
    "extension": "1000",
    "caller": "1000",
    "callee": "2000",
    "kind": "internal",
    "decision": "allow",
    "reasons": "internal call between extensions",
    "start_ts": 1000.0,
}
CLOSE = {"disposition": "answered", "sip_code": 200, "answer_ts": 1001.0, "end_ts": 1031.0}


def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'pbx.db'}")
    s.migrate()
    return s


def test_a_spool_is_written_once_even_when_replayed_twice(tmp_path: Path) -> None:
    db = store(tmp_path)
    direct = db.cdr_open({**OPEN, "call_id": "direct@127.0.0.1"})  # opened before the outage
    spool = tmp_path / "cdr-spool.jsonl"
    ops = [
        {"op": "close", "id": direct, "fields": CLOSE},
        {"op": "open", "key": "k-1", "fields": OPEN},
        {"op": "open", "key": "k-2", "fields": {**OPEN, "call_id": "def@127.0.0.1"}},
        {"op": "close", "key": "k-1", "fields": CLOSE},
    ]
    spool.write_text("".join(json.dumps(op) + "\n" for op in ops) + '{"op": "open", "ke')
    kept = tmp_path / "kept.jsonl"
    shutil.copy(spool, kept)
    writer = CdrWriter(db, spool)
    assert writer.replay() == 4  # the torn last line (a crash mid-write) is skipped
    assert not spool.exists()
    shutil.copy(kept, spool)  # as if the node died after the commit, before the unlink
    assert writer.replay() == 4
    rows = {r["call_id"]: r for r in db.list_cdrs()}
    assert len(rows) == 3
    assert rows["direct@127.0.0.1"]["disposition"] == "answered"
    assert rows["abc@127.0.0.1"]["disposition"] == "answered"
    assert rows["def@127.0.0.1"]["disposition"] == "in-progress"  # closed as interrupted
    assert db.cdr_interrupt_open(2000.0) == 1  # at the next start
    db.close()


async def test_the_answer_time_is_written_at_answer_and_spooled_in_order(tmp_path: Path) -> None:
    """The answer time reaches the open row when the call is answered, directly or, while
    the database is counted down, through the spool (an ``update``, replayed in order and
    idempotently), so that a node killed mid-call leaves it for the takeover."""
    db = store(tmp_path)
    spool = tmp_path / "cdr-spool.jsonl"
    writer = CdrWriter(db, spool, retry=0.1)
    writer.start()
    try:
        writer.open(1, {**OPEN, "call_id": "direct@127.0.0.1"})
        writer.answer(1, 1001.0)
        await writer._queue.join()
        (row,) = db.list_cdrs()
        assert (row["disposition"], row["answer_ts"]) == ("in-progress", 1001.0)

        writer.down_since = 0.0  # as after a failed write: every operation is spooled
        writer.open(2, {**OPEN, "call_id": "spooled@127.0.0.1"})
        writer.answer(2, 1002.0)
        writer.answer(1, 1001.5)  # a row written before the outage: updated by its id
        await writer._queue.join()
        ops = writer.pending()
        assert [op["op"] for op in ops] == ["open", "update", "update"]
        kept = [json.dumps(op) for op in ops]
        for _ in range(100):  # the next retry writes the spool
            if writer.down_since is None:
                break
            await asyncio.sleep(0.05)
        assert writer.down_since is None and not spool.exists()
        spool.write_text("".join(line + "\n" for line in kept))  # replayed again: no change
        assert writer.replay() == 3
        rows = {r["call_id"]: r for r in db.list_cdrs()}
        assert len(rows) == 2
        assert rows["spooled@127.0.0.1"]["answer_ts"] == 1002.0
        assert rows["spooled@127.0.0.1"]["disposition"] == "in-progress"
        assert rows["direct@127.0.0.1"]["answer_ts"] == 1001.5
        writer.close(2, {**CLOSE, "answer_ts": 1002.0, "end_ts": 1040.0, "duration": 38.0})
        await writer._queue.join()
        assert {r["call_id"]: r["disposition"] for r in db.list_cdrs()}["spooled@127.0.0.1"] == (
            "answered"
        )
    finally:
        await writer.stop()
        db.close()


def test_a_lost_nodes_calls_end_at_its_last_heartbeat(tmp_path: Path) -> None:
    """The takeover's close: an answered call lasts from its answer to the node's last
    heartbeat (not to the takeover, later); an unanswered one gets no duration."""
    db = store(tmp_path)
    db.cdr_open({**OPEN, "call_id": "answered@a", "node": "a", "answer_ts": 1001.0})
    db.cdr_open({**OPEN, "call_id": "ringing@a", "node": "a"})
    db.cdr_open({**OPEN, "call_id": "late@a", "node": "a", "start_ts": 1011.0})
    db.cdr_open({**OPEN, "call_id": "other@b", "node": "b", "answer_ts": 1001.0})
    assert db.cdr_interrupt_node("a", 1010.0, 1020.0) == 2
    rows = {r["call_id"]: r for r in db.list_cdrs()}
    answered, ringing = rows["answered@a"], rows["ringing@a"]
    assert answered["disposition"] == "interrupted"
    assert (answered["end_ts"], answered["duration"]) == (1010.0, 9.0)
    assert "node a lost: ended at its last heartbeat" in answered["reasons"]
    assert (ringing["disposition"], ringing["end_ts"], ringing["duration"]) == (
        "interrupted",
        1010.0,
        None,
    )
    assert rows["late@a"]["disposition"] == "in-progress"  # started after it was last seen
    assert rows["other@b"]["disposition"] == "in-progress"
    db.close()
