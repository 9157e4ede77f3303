"""RFC 9162 Merkle trees: leaf and node hashes, the tree head, inclusion and consistency proofs.

A tree is kept as its complete, aligned subtrees: node ``(level, index)`` covers leaves
``[index·2^level, (index+1)·2^level)``. Each is hashed once, when its last leaf arrives, and kept in a
:class:`Nodes` store (a dict in memory, or SQLite beside the audit part). A subtree that is not
complete (the tree's right edge) is hashed from the complete ones it splits into, so a head or a
proof costs O(log² n) lookups, whatever the tree's size.

The proofs are RFC 9162 §2.1.3 (``PATH``) and §2.1.4 (``PROOF``/``SUBPROOF``); the checks are its
§2.1.3.2 and §2.1.4.2 algorithms, written from the RFC (an independent verifier, transparency-dev's Go
code, checks the same proofs in the tests).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The head of the empty tree: SHA-256 of nothing."""


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class Nodes(Protocol):
    """Where the complete subtrees' hashes live."""

    def get(self, level: int, index: int) -> bytes: ...

    def put_many(self, nodes: Iterable[tuple[int, int, bytes]]) -> None: ...


class MemoryNodes:
    """Nodes in a list per level (for exports and tests). A level may start past index 0: a tree
    continued from a frontier (:class:`Frontier`) holds only what lies right of it."""

    def __init__(self) -> None:
        self.levels: list[tuple[int, list[bytes]]] = []

    def get(self, level: int, index: int) -> bytes:
        if level >= len(self.levels) or index < self.levels[level][0]:
            raise KeyError((level, index))
        first, row = self.levels[level]
        return row[index - first]

    def put_many(self, nodes: Iterable[tuple[int, int, bytes]]) -> None:
        for level, index, h in nodes:
            while len(self.levels) <= level:
                self.levels.append((-1, []))
            first, row = self.levels[level]
            if not row:
                self.levels[level] = (index, [h])
            elif index == first + len(row):
                row.append(h)
            elif first <= index < first + len(row):
                row[index - first] = h
            else:
                raise ValueError(f"node ({level}, {index}) leaves a gap")


class Frontier:
    """The complete subtrees a tree of ``size`` leaves splits into, left to right: enough to append leaves
    and compute each new head, in O(log n) memory (what ``ndxp audit verify`` streams with)."""

    def __init__(self, nodes: Sequence[tuple[int, bytes]] = ()) -> None:
        self.nodes: list[tuple[int, bytes]] = list(nodes)
        """(level, hash) of each complete subtree, the largest (leftmost) first."""
        levels = [lv for lv, _ in self.nodes]
        if levels != sorted(set(levels), reverse=True):
            raise ValueError("a frontier's subtrees shrink from left to right")

    @property
    def size(self) -> int:
        return sum(1 << lv for lv, _ in self.nodes)

    def append(self, h: bytes) -> None:
        level = 0
        while self.nodes and self.nodes[-1][0] == level:
            _, left = self.nodes.pop()
            h = node_hash(left, h)
            level += 1
        self.nodes.append((level, h))

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        r = self.nodes[-1][1]
        for _, h in reversed(self.nodes[:-1]):
            r = node_hash(h, r)
        return r

    def indexed(self) -> list[tuple[int, int, bytes]]:
        """The subtrees as (level, index, hash) nodes, to continue a :class:`Tree` from."""
        out, start = [], 0
        for level, h in self.nodes:
            out.append((level, start >> level, h))
            start += 1 << level
        return out


class Tree:
    """An append-only tree over a :class:`Nodes` store holding ``size`` leaves."""

    def __init__(self, nodes: Nodes | None = None, size: int = 0) -> None:
        self.nodes: Nodes = nodes if nodes is not None else MemoryNodes()
        self.size = size
        self._edge: dict[int, tuple[int, bytes]] = {}
        """The newest node of each level: the left siblings the next leaves need, without a lookup."""

    def append(self, hashes: Sequence[bytes]) -> list[tuple[int, int, bytes]]:
        """Append leaf hashes; the new complete nodes (already stored), level 0 included."""
        new: list[tuple[int, int, bytes]] = []
        made: dict[tuple[int, int], bytes] = {}
        for h in hashes:
            index, level = self.size, 0
            new.append((0, index, h))
            made[(0, index)] = h
            while index & 1:  # a right child completes its parent
                left = made.get((level, index - 1))
                if left is None:
                    edge = self._edge.get(level)
                    left = edge[1] if edge and edge[0] == index - 1 else self.nodes.get(level, index - 1)
                self._edge[level] = (index, h)
                h = node_hash(left, h)
                index >>= 1
                level += 1
                new.append((level, index, h))
                made[(level, index)] = h
            self._edge[level] = (index, h)
            self.size += 1
        self.nodes.put_many(new)
        return new

    def forget_edge(self) -> None:
        """Leaves were taken back (a store's transaction undone): look siblings up in the store again."""
        self._edge.clear()

    def hash(self, lo: int, hi: int) -> bytes:
        """MTH of leaves ``[lo, hi)``, where ``lo`` is aligned to the subtree the range is part of."""
        n = hi - lo
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and lo % n == 0:
            return self.nodes.get(n.bit_length() - 1, lo // n)
        k = _split(n)
        return node_hash(self.hash(lo, lo + k), self.hash(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"no tree of size {size} (the tree holds {self.size})")
        return self.hash(0, size)

    def inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[size]): the audit path of leaf ``index`` in the tree of ``size`` leaves."""
        size = self.size if size is None else size
        if not 0 <= index < size <= self.size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        path: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self.hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self.hash(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency(self, old: int, new: int | None = None) -> list[bytes]:
        """PROOF(old, D[new]): that the tree of ``old`` leaves is a prefix of the one of ``new``."""
        new = self.size if new is None else new
        if not 0 <= old <= new <= self.size:
            raise ValueError(f"no consistency proof from {old} to {new} (the tree holds {self.size})")
        if old in (0, new):
            return []
        return self._subproof(old, 0, new, True)

    def _subproof(self, m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [self.hash(lo, hi)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, complete), self.hash(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self.hash(lo, lo + k)]


class ProofError(ValueError):
    """A proof that does not prove what it claims."""


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2: the root a leaf hash and its audit path lead to."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the audit path is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the audit path is too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError(f"leaf {index} is not in the tree of size {size} with that root")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: that ``old_root``'s tree is a prefix of ``new_root``'s."""
    if not 0 <= old <= new:
        raise ProofError(f"no tree of {old} leaves is a prefix of one of {new}")
    if old == new:
        if proof or old_root != new_root:
            raise ProofError("equal sizes need an empty proof and equal roots")
        return
    if old == 0:
        if proof:
            raise ProofError("the empty tree needs an empty proof")
        return
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the path's first node
        path.insert(0, old_root)
    if not path:
        raise ProofError("an empty consistency proof")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is too short")
    if fr != old_root or sr != new_root:
        raise ProofError(f"the tree of {old} leaves is not a prefix of the tree of {new}")
