"""Learn a byte-level BPE vocabulary from text, the way GPT-2's was learned.

Training starts with one token per byte and repeatedly turns the most frequent adjacent
pair of tokens into a new token, recording the pair as the next merge. Encoding
(:mod:`minillm.tokenizer.bpe`) replays the merges in the same order.

* **Counting.** Text is pre-tokenised with GPT-2's regex, exactly as for encoding, and pairs
  are counted within pieces only. Identical pieces are stored once with their frequency, so
  a pair's count is the sum, over pieces, of (its occurrences in the piece) x (the piece's
  frequency). Special tokens are cut out of the text first and never learned from.
* **Incremental updates.** Merging a pair only changes the pieces that contain it. The
  trainer keeps, for every pair, its count and the set of pieces it occurs in; after a merge
  it re-counts just those pieces, subtracting their old pairs and adding their new ones.
  Recounting everything instead would cost a pass over all pieces per merge.
* **Choosing the pair.** A heap orders pairs by count. Counts change after each merge;
  rather than finding and updating old heap entries, the trainer pushes a new entry and
  discards stale ones when they reach the top.
* **Ties.** Among pairs with the highest count, the winner is the pair whose (left bytes,
  right bytes) sorts first, so training is deterministic whatever the order of the input.
* **Ids.** Ids 0-255 are the single bytes in :func:`~minillm.tokenizer.bpe.bytes_to_unicode`
  order, as in GPT-2 (so ``!`` is 0 and a space is 220); each learned token takes the next
  id; the special tokens come last.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

from tqdm import tqdm

from minillm.tokenizer.bpe import (
    ENDOFTEXT,
    GPT2_SPLIT_REGEX,
    Tokenizer,
    bytes_to_unicode,
)
from minillm.tokenizer.special import replace_lone_surrogates, special_token_regex

Pair = tuple[int, int]


def count_pieces(texts: Iterable[str], special_tokens: Sequence[str] = ()) -> Counter[str]:
    """How often each pre-tokenised piece occurs in ``texts``, with special tokens cut out.

    The text is cut and split with the tokenizer's own regexes, so the pieces are those that
    :meth:`~minillm.tokenizer.bpe.Tokenizer.encode` would see with ``allowed_special="all"``, lone
    surrogates replaced by U+FFFD as there.
    """
    specials = special_token_regex(frozenset(special_tokens)) if special_tokens else None
    counts: Counter[str] = Counter()
    for text in map(replace_lone_surrogates, texts):
        for chunk in specials.split(text) if specials else [text]:
            counts.update(GPT2_SPLIT_REGEX.findall(chunk))
    return counts


class BpeTrainer:
    """The state of BPE training: pieces as token ids, pair counts, and the merges so far.

    Call :meth:`best_pair` and :meth:`merge` in turn to learn one token at a time.
    """

    def __init__(self, piece_counts: Mapping[str, int]) -> None:
        byte_order = list(bytes_to_unicode())  # ids 0-255, GPT-2's order of the bytes
        byte_ids = {byte: token_id for token_id, byte in enumerate(byte_order)}
        self.token_bytes: list[bytes] = [bytes([byte]) for byte in byte_order]
        self.merges: list[Pair] = []
        self.pieces: list[list[int]] = [
            [byte_ids[byte] for byte in piece.encode("utf-8")] for piece in piece_counts
        ]
        self.piece_counts: list[int] = list(piece_counts.values())

        self.pair_counts: Counter[Pair] = Counter()
        self.pieces_with_pair: defaultdict[Pair, set[int]] = defaultdict(set)
        for index, piece in enumerate(self.pieces):
            for pair in zip(piece, piece[1:]):
                self.pair_counts[pair] += self.piece_counts[index]
                self.pieces_with_pair[pair].add(index)
        self._heap = [self._heap_entry(pair) for pair in self.pair_counts]
        heapq.heapify(self._heap)

    def _heap_entry(self, pair: Pair) -> tuple[int, bytes, bytes, Pair]:
        """Heap order: highest count first, then the pair whose bytes sort first."""
        return (-self.pair_counts[pair], self.token_bytes[pair[0]], self.token_bytes[pair[1]], pair)

    def best_pair(self) -> Pair | None:
        """The pair to merge next, or None if every piece is a single token."""
        while self._heap:
            negative_count, _, _, pair = self._heap[0]
            if self.pair_counts.get(pair) == -negative_count:
                return pair
            heapq.heappop(self._heap)  # the pair's count has changed since this entry was pushed
        return None

    def merge(self, pair: Pair) -> int:
        """Add the token ``pair`` makes, fuse the pair in every piece, and return the new id."""
        ### BEGIN SOLUTION a1: one training step (record the new token, fuse the pair where it occurs)
        new_id = len(self.token_bytes)
        self.token_bytes.append(self.token_bytes[pair[0]] + self.token_bytes[pair[1]])
        self.merges.append(pair)
        for index in list(self.pieces_with_pair[pair]):
            self._replace_piece(index, merge_ids(self.pieces[index], pair, new_id))
        return new_id
        ### END SOLUTION

    def _replace_piece(self, index: int, new_piece: list[int]) -> None:
        """Swap in a piece's new tokens, moving its pair counts from the old tokens to the new."""
        ### BEGIN SOLUTION a1: the incremental update of the pair counts and the pair index
        old_piece = self.pieces[index]
        old_pairs = Counter(zip(old_piece, old_piece[1:]))
        new_pairs = Counter(zip(new_piece, new_piece[1:]))
        for pair in old_pairs.keys() | new_pairs.keys():
            change = (new_pairs[pair] - old_pairs[pair]) * self.piece_counts[index]
            if change == 0:
                continue
            self.pair_counts[pair] += change
            if new_pairs[pair]:
                self.pieces_with_pair[pair].add(index)
            else:
                self.pieces_with_pair[pair].discard(index)
            if self.pair_counts[pair]:
                heapq.heappush(self._heap, self._heap_entry(pair))
            else:
                del self.pair_counts[pair], self.pieces_with_pair[pair]
        self.pieces[index] = new_piece
        ### END SOLUTION

    def to_tokenizer(self, special_tokens: Sequence[str] = ()) -> Tokenizer:
        """A :class:`~minillm.tokenizer.bpe.Tokenizer` for the merges learned so far."""
        symbol = bytes_to_unicode()

        def spell(token_id: int) -> str:
            return "".join(symbol[byte] for byte in self.token_bytes[token_id])

        vocab = {spell(token_id): token_id for token_id in range(len(self.token_bytes))}
        merges = [(spell(left), spell(right)) for left, right in self.merges]
        specials = {token: len(vocab) + k for k, token in enumerate(special_tokens)}
        return Tokenizer(vocab, merges, specials)


def merge_ids(ids: Sequence[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``ids`` by ``new_id``, left to right."""
    merged: list[int] = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (ENDOFTEXT,),
    *,
    progress: bool = False,
) -> Tokenizer:
    """Learn a byte-level BPE tokenizer with ``vocab_size`` tokens, special tokens included.

    Training stops early, with a smaller vocabulary, if every piece of the text has become a
    single token. ``progress=True`` shows a progress bar. The result is a readable
    :class:`~minillm.tokenizer.bpe.Tokenizer`; save it and load it with
    :class:`~minillm.tokenizer.bpe.FastTokenizer` for fast encoding.
    """
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be distinct, got {list(special_tokens)}")
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ValueError(
            f"vocab_size {vocab_size} is less than 256 bytes + {len(special_tokens)} special tokens"
        )
    trainer = BpeTrainer(count_pieces(texts, special_tokens))
    for _ in tqdm(range(n_merges), desc="BPE merges", disable=not progress):
        pair = trainer.best_pair()
        if pair is None:
            break
        trainer.merge(pair)
    return trainer.to_tokenizer(special_tokens)
