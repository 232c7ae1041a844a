"""The CDR spool replayed into a real (SQLite) database: in order, each call once, even
when a replay is repeated because the node died before it could empty the spool."""

from __future__ import annotations

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
