"""The numba functions of :mod:`minillm.tokenizer.fast`: the pre-tokenisation scanner, the merge
loop with its heap, the whole-token lookup, and :func:`_encode_text`, which runs them over a text.

They are one file because a jitted function must not call jitted code of another file: numba's
on-disk cache notices edits to the function's own file only. fast.py builds the tables they
read (:class:`~minillm.tokenizer.fast.MergeTable`, :class:`~minillm.tokenizer.fast.TokenTable`).
"""

from __future__ import annotations

import numba
import numpy as np

# Character classes of GPT-2's pattern; a code point is in at most one of them.
OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3

_APOSTROPHE, _SPACE_CHAR = ord("'"), ord(" ")
_D, _E, _L, _M, _R, _S, _T, _V = (ord(c) for c in "delmrstv")


# ------------------------------------------------------------------------- pre-tokenisation


@numba.njit(cache=True)
def _piece_end(code_points, start, classes):
    """Where the piece starting at ``start`` ends: GPT-2's regex alternatives, tried in order."""
    n = len(code_points)
    first = code_points[start]
    # 's|'t|'re|'ve|'m|'ll|'d  (lower case only)
    if first == _APOSTROPHE and start + 1 < n:
        second = code_points[start + 1]
        if second == _S or second == _T or second == _M or second == _D:
            return start + 2
        if start + 2 < n:
            third = code_points[start + 2]
            if (second == _R or second == _V) and third == _E:  # 're 've
                return start + 3
            if second == _L and third == _L:  # 'll
                return start + 3
    # ' ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class
    run_start = start
    if first == _SPACE_CHAR and start + 1 < n and classes[code_points[start + 1]] != SPACE:
        run_start = start + 1
    run_class = classes[code_points[run_start]]
    if run_class != SPACE:
        end = run_start + 1
        while end < n and classes[code_points[end]] == run_class:
            end += 1
        return end
    # '\s+(?!\S)|\s+': a whitespace run. If text follows, the run stops one character short,
    # so that a space can begin the next word (" world"); a lone character is a piece itself.
    end = start + 1
    while end < n and classes[code_points[end]] == SPACE:
        end += 1
    if end < n and end - start > 1:
        end -= 1
    return end


@numba.njit(cache=True)
def _utf8_length(code_point):
    if code_point < 0x80:
        return 1
    if code_point < 0x800:
        return 2
    if code_point < 0x10000:
        return 3
    return 4


# ------------------------------------------------------------------------------------ BPE


@numba.njit(cache=True)
def _slot(left, right, n_slots):
    """Home slot of the pair (left, right): a cheap multiplicative hash."""
    return (left * 0x2545F491 + right * 0x9E3779B1) & (n_slots - 1)


@numba.njit(cache=True)
def _fill_merge_table(table, left, right, merged):
    """Insert merge number ``rank`` of ``left[rank]`` and ``right[rank]``, for every rank."""
    n_slots = len(table.key)
    for rank in range(len(left)):
        slot = _slot(left[rank], right[rank], n_slots)
        while table.key[slot] != -1:
            slot = (slot + 1) & (n_slots - 1)
        table.key[slot] = left[rank] << 32 | right[rank]
        table.rank[slot] = rank
        table.merged[slot] = merged[rank]


@numba.njit(cache=True)
def _find_merge(table, left, right):
    """Slot of the merge (left, right) in ``table``, or -1 if there is no such merge."""
    key = left << 32 | right
    n_slots = len(table.key)
    slot = _slot(left, right, n_slots)
    while table.key[slot] != key:
        if table.key[slot] == -1:
            return -1
        slot = (slot + 1) & (n_slots - 1)
    return slot


@numba.njit(cache=True)
def _heap_push(heap, size, key):
    heap[size] = key
    child = size
    while child > 0:
        parent = (child - 1) // 2
        if heap[parent] <= heap[child]:
            break
        heap[parent], heap[child] = heap[child], heap[parent]
        child = parent
    return size + 1


@numba.njit(cache=True)
def _heap_pop(heap, size):
    """Remove the smallest key, heap[0]; returns the new size."""
    size -= 1
    heap[0] = heap[size]
    parent = 0
    while True:
        child = 2 * parent + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[parent] <= heap[child]:
            break
        heap[parent], heap[child] = heap[child], heap[parent]
        parent = child
    return size


@numba.njit(cache=True)
def _merge_piece(tokens, n, table, next_pos, prev_pos, heap, deferred):
    """Run BPE on ``tokens[:n]`` in place; returns how many tokens remain, in ``tokens[:count]``.

    Each candidate pair is a heap key ``rank << 32 | position`` (position of its left symbol),
    so the heap yields the lowest rank first and, within a rank, the leftmost pair, which is
    the order of GPT-2's left-to-right pass. Keys are not removed when a merge changes a pair;
    a popped key is used only if its pair is still there.
    """
    for i in range(n):
        next_pos[i] = i + 1
        prev_pos[i] = i - 1
    size = 0
    for i in range(n - 1):
        k = _find_merge(table, tokens[i], tokens[i + 1])
        if k >= 0:
            size = _heap_push(heap, size, table.rank[k] << 32 | i)

    # GPT-2 fuses every occurrence of the best pair before choosing the next pair. A merge can
    # create a pair ranked below the current one (when two merges build the same token), so
    # such pairs wait in `deferred` until the current rank's pass is over.
    current_rank = -1
    n_deferred = 0
    while True:
        if size == 0 or heap[0] >> 32 != current_rank:
            for d in range(n_deferred):
                size = _heap_push(heap, size, deferred[d])
            n_deferred = 0
            if size == 0:
                break
            current_rank = heap[0] >> 32
        key = heap[0]
        size = _heap_pop(heap, size)
        i = key & 0xFFFFFFFF
        j = next_pos[i]
        if tokens[i] < 0 or j >= n:
            continue
        k = _find_merge(table, tokens[i], tokens[j])
        if k < 0 or table.rank[k] != current_rank:
            continue  # the pair changed since this key was pushed
        tokens[i] = table.merged[k]
        tokens[j] = -1
        next_pos[i] = next_pos[j]
        if next_pos[j] < n:
            prev_pos[next_pos[j]] = i
        for left in (prev_pos[i], i):
            if left < 0 or next_pos[left] >= n:
                continue
            k = _find_merge(table, tokens[left], tokens[next_pos[left]])
            if k < 0:
                continue
            new_key = table.rank[k] << 32 | left
            if table.rank[k] < current_rank:
                deferred[n_deferred] = new_key
                n_deferred += 1
            else:
                size = _heap_push(heap, size, new_key)

    count = 0
    i = 0
    while i < n:
        tokens[count] = tokens[i]
        count += 1
        i = next_pos[i]
    return count


@numba.njit(cache=True)
def _workspace(capacity):
    """Scratch arrays for :func:`_merge_piece` on pieces of up to ``capacity`` bytes."""
    tokens = np.empty(capacity, np.int64)
    next_pos = np.empty(capacity, np.int64)
    prev_pos = np.empty(capacity, np.int64)
    heap = np.empty(3 * capacity, np.int64)  # n - 1 initial pairs, then at most 2 per merge
    deferred = np.empty(2 * capacity, np.int64)
    return tokens, next_pos, prev_pos, heap, deferred


@numba.njit(cache=True)
def _encode_text(code_points, utf8, classes, byte_ids, merge_table, token_table, out):
    """Pre-tokenise and BPE a whole text; writes the ids to ``out`` and returns their number."""
    tokens, next_pos, prev_pos, heap, deferred = _workspace(64)
    n_out = 0
    start = 0
    byte_start = 0
    while start < len(code_points):
        end = _piece_end(code_points, start, classes)
        n_bytes = 0
        for i in range(start, end):
            n_bytes += _utf8_length(code_points[i])
        whole = _find_token(token_table, utf8, byte_start, n_bytes)
        if whole >= 0:
            out[n_out] = whole
            n_out += 1
        else:
            if n_bytes > len(tokens):
                tokens, next_pos, prev_pos, heap, deferred = _workspace(2 * n_bytes)
            for i in range(n_bytes):
                tokens[i] = byte_ids[utf8[byte_start + i]]
            count = _merge_piece(tokens, n_bytes, merge_table, next_pos, prev_pos, heap, deferred)
            for i in range(count):  # a loop, not a slice copy: that costs seconds to compile
                out[n_out + i] = tokens[i]
            n_out += count
        start = end
        byte_start += n_bytes
    return n_out


# ---------------------------------------------------------------------- whole-token lookup


@numba.njit(cache=True)
def _bytes_hash(data, start, length):
    """32-bit FNV-1a hash of ``data[start:start + length]``."""
    h = 2166136261
    for i in range(start, start + length):
        h = ((h ^ data[i]) * 16777619) & 0xFFFFFFFF
    return h


@numba.njit(cache=True)
def _find_token(table, data, start, length):
    """Id of the table's token whose bytes are ``data[start:start + length]``, or -1."""
    mask = len(table.slot_token) - 1
    slot = _bytes_hash(data, start, length) & mask
    while table.slot_token[slot] != -1:
        token = table.slot_token[slot]
        token_start = table.start[token]
        if table.start[token + 1] - token_start == length:
            i = 0
            while i < length and table.data[token_start + i] == data[start + i]:
                i += 1
            if i == length:
                return token
        slot = (slot + 1) & mask
    return -1


@numba.njit(cache=True)
def _fill_token_table(table, byte_ids, merge_table):
    """Insert every token whose bytes BPE back to that token alone."""
    mask = len(table.slot_token) - 1
    tokens, next_pos, prev_pos, heap, deferred = _workspace(64)
    for token in range(len(table.start) - 1):
        start, length = table.start[token], table.start[token + 1] - table.start[token]
        if length > len(tokens):
            tokens, next_pos, prev_pos, heap, deferred = _workspace(2 * length)
        for i in range(length):
            tokens[i] = byte_ids[table.data[start + i]]
        count = _merge_piece(tokens, length, merge_table, next_pos, prev_pos, heap, deferred)
        if count != 1 or tokens[0] != token:
            continue
        slot = _bytes_hash(table.data, start, length) & mask
        while table.slot_token[slot] != -1:
            slot = (slot + 1) & mask
        table.slot_token[slot] = token
