"""A piece's symbols as a linked list: the data structure of the BPE merge loop (bpe.py).

Fusing two neighbours in a Python list shifts everything after them (O(n) per merge); in a
linked list it relinks two pointers. Positions never move, so (rank, position) entries in
the merge loop's heap keep naming the same pair until a fusion changes it.
"""
from __future__ import annotations

from collections.abc import Sequence


class SymbolChain:
    """A piece's symbols as a doubly linked list, so that fusing two neighbours is O(1).

    A fused symbol keeps the position of its left part, so positions still order the symbols
    left to right, and a position is a stable name for a symbol in the heap of pairs.
    """

    def __init__(self, symbols: Sequence[str]) -> None:
        n = len(symbols)
        self._symbol: list[str | None] = list(symbols)  # None once fused into its left neighbour
        self.next = [*range(1, n), -1]  # position of the symbol on the right, -1 at the end
        self.previous = list(range(-1, n - 1))  # position on the left, -1 at the start

    def pair_at(self, i: int) -> tuple[str, str] | None:
        """The symbol at ``i`` and its right neighbour, or None if either is missing."""
        right = self.next[i]
        if self._symbol[i] is None or right < 0:
            return None
        return self._symbol[i], self._symbol[right]

    def fuse(self, i: int) -> None:
        """Replace the symbol at ``i`` and its right neighbour by their concatenation."""
        ### BEGIN SOLUTION a1: the merge step (fuse two neighbours in the linked list)
        right = self.next[i]
        self._symbol[i] += self._symbol[right]
        self._symbol[right] = None
        self.next[i] = self.next[right]
        if self.next[i] >= 0:
            self.previous[self.next[i]] = i
        ### END SOLUTION

    def symbols(self) -> tuple[str, ...]:
        """The symbols, left to right."""
        return tuple(symbol for symbol in self._symbol if symbol is not None)
