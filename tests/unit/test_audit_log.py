"""The exchange log's pieces: RFC 9162 trees and proofs, C2SP signed notes and checkpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from broker.audit import merkle
from broker.audit.index import CHUNK_BYTES, Index, Reader, decode_chunk, encode_chunk, pack
from broker.audit.merkle import ProofError, Tree
from broker.audit.note import Checkpoint, NoteError, Signer, Verifier, open_note, sign


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
