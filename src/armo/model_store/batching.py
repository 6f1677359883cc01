"""The one rule for cutting work into batches under a budget, used at every level: the micro-batcher (requests →
one worker batch), the forward path (sequences → forward passes) and training extraction (prompt groups →
passes).

A piece is what is never split (a request, a prompt with its responses, a sequence): `rows` outputs over `tokens`
real tokens, its longest row `width` tokens wide. What a batch costs depends on how it runs, as in
text-embeddings-inference's queue: unpadded (packed) passes cost their real tokens, padded ones rows × the widest
row. Padded batches may also cap their padding as a share of their real tokens: padded rows cost full compute,
and on a CPU a pass of similar lengths beats a larger pass that is partly padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

UNLIMITED = 1 << 62


@dataclass(frozen=True)
class Piece:
    tokens: int  # real tokens
    rows: int = 1  # outputs (sequences) it adds to a batch
    width: int = 0  # its longest row; 0: `tokens` (a single row)

    @property
    def widest(self) -> int:
        return self.width or self.tokens


@dataclass(frozen=True)
class Budget:
    tokens: int  # cost ceiling of one batch: real tokens, or rows × widest when padded
    rows: int = UNLIMITED  # outputs per batch
    max_padding: float = float("inf")  # padded batches only: padding allowed, as a share of the real tokens


@dataclass(frozen=True)
class Load:
    """What a batch being filled holds so far."""

    tokens: int = 0
    rows: int = 0
    width: int = 0

    def plus(self, piece: Piece) -> Load:
        return Load(self.tokens + piece.tokens, self.rows + piece.rows, max(self.width, piece.widest))

    def cost(self, padded: bool) -> int:
        return self.rows * self.width if padded else self.tokens


def fits(load: Load, piece: Piece, budget: Budget, *, padded: bool) -> bool:
    """Whether `piece` may join a batch holding `load`. An empty batch takes any piece: a piece over the budget
    runs alone rather than never."""
    if load.rows == 0:
        return True
    after = load.plus(piece)
    if after.rows > budget.rows or after.cost(padded) > budget.tokens:
        return False
    return not (padded and after.rows * after.width - after.tokens > budget.max_padding * after.tokens)


def cut(pieces: Sequence[Piece], budget: Budget, *, padded: bool) -> list[list[int]]:
    """Consecutive pieces (indices) grouped greedily into batches that fit `budget`. Sort first where order is free:
    neighbours of similar length pad least."""
    batches: list[list[int]] = []
    load = Load()
    for i, piece in enumerate(pieces):
        if not fits(load, piece, budget, padded=padded):
            load = Load()
        if load.rows == 0:
            batches.append([])
        batches[-1].append(i)
        load = load.plus(piece)
    return batches
