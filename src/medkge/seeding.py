"""Random streams keyed by integers: the same numbers whatever the number of processes.

Training draws its initial tables, the order of the triples and every negative from generators seeded by a
tuple (seed, purpose, step, block, ...), never from one generator consumed in sequence. A process that holds
rows 500..999 of the entity table, or positions 512..1023 of a batch, draws exactly the numbers a single process
draws for them, so a run on N processes trains the model one process trains (to float rounding), and a
checkpoint needs no generator state: resuming at step s draws what step s would have drawn.
"""

from __future__ import annotations

import torch
from torch import Tensor

# The purposes a key starts with (after the seed): one stream per kind of draw.
ENTITY_INIT, SIDES, NEGATIVES, SHARED, ORDER, RELATION_INIT, REDRAW = 1, 2, 3, 4, 5, 6, 7
INIT_ROWS = 4096  # entity rows initialised by one keyed generator
BLOCK = 128  # positions of a batch whose sides and negatives one keyed generator draws

_MASK = 0xFFFFFFFFFFFFFFFF


def keyed_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by a tuple of integers (splitmix64 over the parts: nearby keys give unrelated
    streams)."""
    state = 0x9E3779B97F4A7C15
    for part in key:
        state = (state ^ (part & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK
    return torch.Generator().manual_seed(state & 0x7FFFFFFFFFFFFFFF)


def init_entity_rows(rows: Tensor, lo: int, num_entities: int, seed: int, scale: float) -> None:
    """Fill ``rows`` (entity rows ``lo .. lo + len(rows) - 1`` of a table of ``num_entities``) uniform in
    [-scale, scale], from generators keyed by blocks of INIT_ROWS rows: every process holding some rows fills
    them with the values a single process gives them."""
    hi = lo + len(rows)
    if hi <= lo:
        return
    with torch.no_grad():
        for block in range(lo // INIT_ROWS, (hi - 1) // INIT_ROWS + 1):
            start, stop = block * INIT_ROWS, min((block + 1) * INIT_ROWS, num_entities)
            values = torch.empty(stop - start, *rows.shape[1:]).uniform_(
                -scale, scale, generator=keyed_generator(seed, ENTITY_INIT, block)
            )
            a, b = max(start, lo), min(stop, hi)
            rows[a - lo : b - lo] = values[a - start : b - start].to(rows.device, rows.dtype)
