"""The exchange log's pieces: RFC 9162 trees and proofs, C2SP signed notes and checkpoints."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from broker.audit import merkle
from broker.audit.api import make_app
from broker.audit.index import CHUNK_BYTES, Index, Reader, decode_chunk, encode_chunk, pack
from broker.audit.merkle import ProofError, Tree
from broker.audit.note import Checkpoint, NoteError, Signer, Verifier, open_note, sign
from broker.audit.verify import Tampered, parse_checkpoints, verify_bundle, write_bundle
from broker.metrics import AuditMetrics


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1, written naively."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return merkle.leaf_hash(leaves[0])
    k = 1 << ((n - 1).bit_length() - 1)
    return merkle.node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [_mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, leaves[:k], b), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


LEAVES = [f"leaf {i}".encode() for i in range(70)]


def _tree(n: int) -> Tree:
    tree = Tree()
    # in uneven batches, as the writer appends them
    i = 0
    while i < n:
        step = 1 + i % 5
        tree.append([merkle.leaf_hash(x) for x in LEAVES[i : min(n, i + step)]])
        i += step
    return tree


def test_heads_and_proofs_match_the_rfc_definitions() -> None:
    tree = _tree(len(LEAVES))
    for n in range(0, len(LEAVES) + 1):
        assert tree.root(n) == _mth(LEAVES[:n])
        for m in range(n):
            proof = tree.inclusion(m, n)
            assert proof == _path(m, LEAVES[:n])
            merkle.verify_inclusion(m, n, merkle.leaf_hash(LEAVES[m]), proof, tree.root(n))
        for m in range(1, n):
            proof = tree.consistency(m, n)
            assert proof == _subproof(m, LEAVES[:n], True)
            merkle.verify_consistency(m, n, tree.root(m), tree.root(n), proof)


def test_a_frontier_streams_the_heads_and_continues_a_tree() -> None:
    frontier = merkle.Frontier()
    for n, leaf in enumerate(LEAVES, 1):
        frontier.append(merkle.leaf_hash(leaf))
        assert frontier.size == n
        assert frontier.root() == _mth(LEAVES[:n])
    cut = merkle.Frontier()
    for leaf in LEAVES[:37]:
        cut.append(merkle.leaf_hash(leaf))
    nodes = merkle.MemoryNodes()
    nodes.put_many(cut.indexed())
    rest = Tree(nodes, 37)  # continued from the frontier: what an export holds
    rest.append([merkle.leaf_hash(x) for x in LEAVES[37:]])
    full = _tree(len(LEAVES))
    for n in range(38, len(LEAVES) + 1):
        assert rest.root(n) == full.root(n)
        assert rest.consistency(37, n) == full.consistency(37, n)
        assert rest.inclusion(n - 1, n) == full.inclusion(n - 1, n)


def test_proofs_that_lie_are_refused() -> None:
    tree = _tree(21)
    root = tree.root()
    proof = tree.inclusion(5)
    good = merkle.leaf_hash(LEAVES[5])
    with pytest.raises(ProofError):
        merkle.verify_inclusion(5, 21, merkle.leaf_hash(LEAVES[6]), proof, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(6, 21, good, proof, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(5, 21, good, proof[:-1], root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(5, 21, good, [*proof, root], root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(5, 21, good, proof, tree.root(20))
    cons = tree.consistency(13, 21)
    with pytest.raises(ProofError):
        merkle.verify_consistency(13, 21, tree.root(12), root, cons)
    with pytest.raises(ProofError):
        merkle.verify_consistency(13, 21, tree.root(13), root, cons[:-1])
    other = Tree()
    other.append([merkle.leaf_hash(x) for x in [*LEAVES[:7], b"changed", *LEAVES[8:21]]])
    with pytest.raises(ProofError):  # a changed leaf: the old head is no prefix of the new one
        merkle.verify_consistency(13, 21, tree.root(13), other.root(), other.consistency(13, 21))


def test_impossible_sizes_and_malformed_proofs_are_refused() -> None:
    tree = _tree(13)
    root, h = tree.root(), merkle.leaf_hash(LEAVES[5])
    path = tree.inclusion(5)
    for bad in ([*path, root], path[:-1]):  # one node too many, one too few
        with pytest.raises(ProofError, match=r"too (long|short)"):
            merkle.verify_inclusion(5, 13, h, bad, root)
    with pytest.raises(ProofError, match="not in a tree of size"):
        merkle.verify_inclusion(13, 13, h, path, root)
    cons = tree.consistency(6, 13)
    for old, new, old_root, proof in [
        (7, 6, tree.root(6), cons),  # shrinking
        (13, 13, root, [root]),  # equal sizes take no proof
        (13, 13, tree.root(6), []),  # and equal roots
        (0, 13, merkle.EMPTY_ROOT, cons),  # the empty tree takes no proof
        (6, 13, tree.root(6), []),  # a proof is needed
        (6, 13, tree.root(6), [*cons, root]),  # one node too many
        (6, 13, tree.root(6), cons[:-1]),  # one too few
    ]:
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, new, old_root, root if new == 13 else tree.root(new), proof)
    merkle.verify_consistency(0, 13, merkle.EMPTY_ROOT, root, [])
    merkle.verify_consistency(13, 13, root, root, [])
    for call in (lambda: tree.root(14), lambda: tree.inclusion(13), lambda: tree.consistency(5, 14)):
        with pytest.raises(ValueError, match="tree"):
            call()
    with pytest.raises(ValueError, match="shrink from left to right"):
        merkle.Frontier([(0, root), (1, root)])
    nodes = merkle.MemoryNodes()
    nodes.put_many([(0, 4, root)])
    with pytest.raises(ValueError, match="leaves a gap"):
        nodes.put_many([(0, 9, root)])
    with pytest.raises(KeyError):
        nodes.get(0, 3)
    with pytest.raises(KeyError):
        nodes.get(1, 0)


def test_signed_notes_round_trip_and_refuse_what_they_should() -> None:
    signer = Signer.generate("ndxp.example/log")
    vkey = signer.verifier().text()
    assert Verifier.parse(vkey).key_id == signer.verifier().key_id
    assert Signer.parse(signer.text()).verifier().text() == vkey
    cp = Checkpoint("ndxp.example/log", 21, _tree(21).root())
    note = sign(cp.text(), signer)
    assert Checkpoint.open(note, Verifier.parse(vkey), "ndxp.example/log") == cp
    other = Signer.generate("ndxp.example/log")
    with pytest.raises(NoteError):
        Checkpoint.open(note, other.verifier())
    with pytest.raises(NoteError):
        Checkpoint.open(note.replace("\n21\n", "\n22\n"), signer.verifier())
    with pytest.raises(NoteError):
        Checkpoint.open(note, signer.verifier(), "another/log")
    both = sign(cp.text(), other, signer)  # a rotation: old and new key sign the same text
    assert open_note(both, signer.verifier()) == open_note(both, other.verifier()) == cp.text()
    for bad in ("a+b", "x+00000000+AAAA", vkey.replace("+", "+0", 1)):
        with pytest.raises(NoteError):
            Verifier.parse(bad)


def test_malformed_keys_notes_and_checkpoints_are_named() -> None:
    signer = Signer.generate("ndxp.example/log")
    vkey, skey = signer.verifier().text(), signer.text()
    name, kid, b64 = vkey.split("+", 2)
    ed448ish = base64.b64encode(b"\x02" + b"\x00" * 32).decode()
    for bad, said in [
        ("", "<name>+<hex id>+<base64 key>"),
        (f"bad name+{kid}+{b64}", "non-empty, without"),
        (f"{name}+zz+{b64}", "does not decode"),
        (f"{name}+{kid}+{ed448ish}", "only Ed25519"),
        (f"{name}+00000000+{b64}", "id does not match"),
    ]:
        with pytest.raises(NoteError, match=re.escape(said)):
            Verifier.parse(bad)
    seed = skey.split("+", 4)[4]
    for bad, said in [
        (vkey, "PRIVATE+KEY"),
        (f"PRIVATE+KEY+{name}+{kid}+!!", "does not decode"),
        (f"PRIVATE+KEY+{name}+{kid}+{ed448ish}", "only Ed25519"),
        (f"PRIVATE+KEY+{name}+00000000+{seed}", "id does not match"),
    ]:
        with pytest.raises(NoteError, match=re.escape(said)):
            Signer.parse(bad)
    with pytest.raises(NoteError, match="non-empty"):
        Signer.generate("two words")
    with pytest.raises(NoteError, match="holds no blank line"):
        sign("no newline at the end", signer)
    note = sign("a line\n", signer)
    for bad, said in [
        ("a line\n", "text, a blank line"),
        ("a line\n\nnot a signature\n", "malformed signature line"),
        (f"a line\n\n\u2014 {name} !!notbase64\n", "does not decode"),
        ("a line\n\n\u2014 someone.else AAAA\n", "not signed by"),
    ]:
        with pytest.raises(NoteError, match=re.escape(said)):
            open_note(bad, signer.verifier())
    assert open_note(note, signer.verifier()) == "a line\n"
    root = base64.b64encode(b"\x00" * 32).decode()
    for bad, said in [
        ("origin\n1\n", "one a line"),
        (f"\n1\n{root}\n", "size is not a number"),
        (f"origin\n01\n{root}\n", "size is not a number"),
        ("origin\n1\n!!\n", "does not decode"),
        ("origin\n1\nAAAA\n", "not a SHA-256"),
    ]:
        with pytest.raises(NoteError, match=re.escape(said)):
            Checkpoint.parse_text(bad)
    assert Checkpoint.parse_text(f"origin\n0\n{root}\nextension line\n").size == 0


def test_a_signed_note_matches_gos_format() -> None:
    """The key id and signature line layout of golang.org/x/mod/sumdb/note's own example."""
    # From note's documentation: a verifier key for the name PeterNeumann.
    vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    v = Verifier.parse(vkey)
    text = (
        "If you think cryptography is the answer to your problem,\n"
        "then you don't know what your problem is.\n"
    )
    note = text + (
        "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2p"
        "ZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
    )
    assert open_note(note, v) == text


def test_the_index_shows_readers_only_what_was_committed(tmp_path: Path) -> None:
    index = Index(tmp_path / "audit.sqlite")
    reader = Reader(tmp_path / "audit.sqlite")
    records = [
        orjson.dumps(
            {"exchange_id": f"e{i}", "client": "alice", "provider": "bca", "subject": "s" if i % 2 else None}
        )
        for i in range(9)
    ]
    index.begin()
    index.append(records[:5])
    index.commit(leaves_offset=1)
    index.begin()
    index.append(records[5:])
    assert reader.size() == 5, "a reader never sees an uncommitted batch"
    assert reader.by_exchange("e6") is None
    index.rollback()  # Kafka's transaction failed: the batch is gone, the tree as before
    assert index.tree.size == 5
    index.begin()
    index.append(records[5:])
    index.commit(leaves_offset=2)
    assert reader.size() == 9
    assert reader.tree().root() == _tree_of(records).root()
    found = reader.by_exchange("e7")
    assert found is not None
    assert found.index == 7
    assert [leaf.index for leaf in reader.accesses("s", 100)] == [1, 3, 5, 7]
    assert index.has_exchange("e8")
    assert not index.has_exchange("e9")
    index.close()
    again = Index(tmp_path / "audit.sqlite")  # reopened: the same tree
    assert again.tree.size == 9
    assert again.tree.root() == reader.tree().root()
    again.close()
    reader.close()


def test_leaves_travel_in_chunks_that_decode_to_themselves() -> None:
    leaves = [bytes([i % 251]) * (i * 997 % 70_000) for i in range(200)]
    chunks = pack(leaves)
    assert len(chunks) > 1
    assert all(sum(len(x) + 4 for x in c) <= CHUNK_BYTES or len(c) == 1 for c in chunks)
    assert [x for c in chunks for x in decode_chunk(encode_chunk(c))] == leaves
    with pytest.raises(ValueError, match="ends inside"):
        decode_chunk(encode_chunk(leaves[:3])[:-1])


def _tree_of(leaves: list[bytes]) -> Tree:
    tree = Tree()
    tree.append([merkle.leaf_hash(x) for x in leaves])
    return tree


class _DownTracker:
    """PostgreSQL unreachable."""

    async def accesses(self, subject: str, limit: int) -> list[object]:
        raise OSError("connection refused")


async def test_the_audit_api_says_pending_not_found_and_bad_request(tmp_path: Path) -> None:
    """Over a real index: nothing is invented before a checkpoint covers it, nothing shown to others."""
    index = Index(tmp_path / "audit.sqlite")
    reader = Reader(tmp_path / "audit.sqlite")
    metrics = AuditMetrics(CollectorRegistry())
    signer = Signer.generate("test.ndxp/log")
    key = "ab" * 32
    records = [orjson.dumps({"exchange_id": f"e{i}", "client": "alice", "provider": "bca", "subject": key,
                             "t_in": 1_700_000_000_000 + i}) for i in range(4)]  # fmt: skip
    healthy = [True]
    app = make_app(reader, metrics, signer.verifier().text(), lambda: healthy[0], lambda: 0.0)
    async with TestClient(TestServer(app)) as http:
        assert (await http.get("/checkpoint")).status == 202  # no checkpoint yet: pending, not made up
        index.begin()
        index.append(records[:2])
        index.commit(leaves_offset=1)
        alice = {"X-NDXP-Agency": "alice"}
        resp = await http.get("/exchanges/e1", headers=alice)
        assert resp.status == 202, "a leaf no checkpoint covers has no proof yet"
        assert resp.headers["Retry-After"] == "1"
        recent = str(uuid.UUID(int=(int(time.time() * 1000) << 80) | (7 << 76) | (2 << 62)))
        assert (await http.get(f"/exchanges/{recent}", headers=alice)).status == 202  # in the last seconds
        old = str(uuid.UUID(int=(1_600_000_000_000 << 80) | (7 << 76) | (2 << 62)))
        assert (await http.get(f"/exchanges/{old}", headers=alice)).status == 404
        assert (await http.get(f"/exchanges/{uuid.uuid4()}", headers=alice)).status == 404  # not a v7
        assert (await http.get("/exchanges/e1", headers={"X-NDXP-Agency": "mallory"})).status == 404
        resp = await http.get("/exchanges/e1")
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["code"] == "not_found"
        index.begin()
        index.append(records[2:])
        index.add_checkpoint(4, sign(Checkpoint("test.ndxp/log", 4, index.tree.root()).text(), signer))
        index.commit(leaves_offset=2)
        found = await (await http.get("/exchanges/e1", headers={"X-NDXP-Agency": "bca"})).json()
        assert found["tree_size"] == 4
        proof = [bytes.fromhex(h) for h in found["inclusion_proof"]]
        merkle.verify_inclusion(1, 4, bytes.fromhex(found["leaf_hash"]), proof, index.tree.root())
        assert (await http.get("/checkpoint")).status == 200
        for query, code in [("from=1&to=4", 200), ("from=3&to=2", 400), ("from=x&to=2", 400),
                            ("to=2", 400), ("from=1&to=5", 404)]:  # fmt: skip
            assert (await http.get(f"/consistency?{query}")).status == code, query
        rows = (await (await http.get(f"/subjects/{key}/accesses")).json())["accesses"]
        assert [r["exchange_id"] for r in rows] == ["e0", "e1", "e2", "e3"]
        assert rows[0]["at"] == "2023-11-14T22:13:20.000Z"
        assert (await http.get("/subjects/not-a-key/accesses")).status == 400
        status = await (await http.get("/status")).json()
        assert status == {"tree_size": 4, "checkpoint_size": 4, "checkpoint_age_s": None, "healthy": True}
        assert (await http.get("/healthz")).status == 200
        healthy[0] = False
        assert (await http.get("/healthz")).status == 503
        assert "ndxp_audit_requests_total" in await (await http.get("/metrics")).text()
    down = make_app(reader, metrics, signer.verifier().text(), lambda: True, time.time, _DownTracker())  # type: ignore[arg-type]
    async with TestClient(TestServer(down)) as http:
        resp = await http.get(f"/subjects/{key}/accesses")
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        assert (await (await http.get("/status")).json())["checkpoint_age_s"] is not None
    index.close()
    reader.close()


def _day_two_bundle(out: Path) -> tuple[Signer, list[bytes]]:
    """A bundle that starts mid-log (a second day's): leaves 4..11, checkpoints at 8 and 12."""
    signer = Signer.generate("test.ndxp/log")
    vkey = signer.verifier().text()
    leaves = [orjson.dumps({"kind": "audit-key", "vkey": vkey, "previous": None})]
    leaves += [orjson.dumps({"exchange_id": f"e{i}", "client": "alice", "status": 200}) for i in range(11)]
    full = _tree_of(leaves)
    notes = {n: sign(Checkpoint("test.ndxp/log", n, full.root(n)).text(), signer) for n in (4, 8, 12)}
    frontier = merkle.Frontier()
    for leaf in leaves[:4]:
        frontier.append(merkle.leaf_hash(leaf))
    nodes = merkle.MemoryNodes()
    nodes.put_many(frontier.indexed())
    tree = Tree(nodes, 4)
    tree.append([merkle.leaf_hash(x) for x in leaves[4:]])
    start = {"origin": "test.ndxp/log", "day": "2026-12-02", "size": 4, "key": vkey, "checkpoint": notes[4],
             "frontier": [[lv, h.hex()] for lv, h in frontier.nodes]}  # fmt: skip
    inside = parse_checkpoints([(f"cp {n}", None, notes[n], 0) for n in (8, 12)])
    write_bundle(out, tree, start, leaves[4:], inside, [vkey])
    return signer, leaves


def test_a_bundle_that_starts_mid_log_verifies_and_its_start_is_checked(tmp_path: Path) -> None:
    signer, leaves = _day_two_bundle(tmp_path / "day")
    check = verify_bundle(tmp_path / "day", {signer.verifier().text()})
    assert (check.frontier.size, check.checked) == (12, 2)
    assert check.frontier.root() == _tree_of(leaves).root()

    def broken(name: str, change: Callable[[dict[str, Any]], None]) -> Path:
        bundle = tmp_path / name
        shutil.copytree(tmp_path / "day", bundle)
        doc = orjson.loads((bundle / "start.json").read_bytes())
        change(doc)
        (bundle / "start.json").write_bytes(orjson.dumps(doc))
        return bundle

    cases: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
        ("short", lambda d: d["frontier"].pop(), "its frontier covers"),
        ("nocp", lambda d: d.update(checkpoint=None), "needs the checkpoint and key"),
        ("stranger", lambda d: d.update(key=Signer.generate("x").verifier().text()), "not a trusted key"),
        ("moved", lambda d: d["frontier"][0].__setitem__(1, "00" * 32), "does not match its checkpoint"),
        ("forged", lambda d: d.update(checkpoint=d["checkpoint"].replace("\n4\n", "\n5\n")), "is forged"),
    ]
    for name, change, said in cases:
        with pytest.raises(Tampered, match=said):
            verify_bundle(broken(name, change), {signer.verifier().text()})
    bundle = broken("proof", lambda d: None)
    lines = (bundle / "consistency.jsonl").read_bytes().splitlines()
    doc = orjson.loads(lines[0])
    doc["proof"][0] = "00" * 32
    (bundle / "consistency.jsonl").write_bytes(b"\n".join([orjson.dumps(doc), *lines[1:]]) + b"\n")
    with pytest.raises(Tampered, match=re.escape("consistency.jsonl line 1: 4 → 8 does not hold")):
        verify_bundle(bundle)
    (bundle / "consistency.jsonl").write_bytes(b"{not json\n")
    with pytest.raises(Tampered, match=re.escape("consistency.jsonl line 1 is not JSON")):
        verify_bundle(bundle)
    (bundle / "leaves.jsonl").write_bytes(b'{"index": 4, "leaf": "!!"}\n')
    with pytest.raises(Tampered, match=re.escape("leaves.jsonl line 1 holds no leaf")):
        verify_bundle(bundle)
    (bundle / "leaves.jsonl").write_bytes(
        orjson.dumps({"index": 4, "leaf": base64.b64encode(b"[]").decode()})
    )
    with pytest.raises(Tampered, match=r"leaf 4 \(leaves.jsonl line 1\) is not a transaction record"):
        verify_bundle(bundle)
