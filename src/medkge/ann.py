"""An approximate nearest-neighbour index for GET /similar at scale (the ``ann`` extra: faiss-cpu).

``/similar`` ranks entities by the cosine of their d-dim rows (all parts flattened). Exactly, that reads the whole
d-dim table per query (0.5 GB at 2M entities and d = 32 complex coordinates). An index built once per served dim
(``medkge serve --index 32,64``) answers in well under a millisecond at that scale, with recall@10 against exact
measured by benchmarks/ann.py (faiss's HNSW chosen there over hnswlib and faiss IVF: docs in the README).

Which way /similar ranks: a request with ``funnel=D:K`` uses the funnel (exact cosine of a shortlist); else a
dim with an index uses the index; else the exact brute force (medkge.inference.Inference.similar).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .errors import MedkgeError

M = 16  # links per node
EF_CONSTRUCTION = 100
EF_SEARCH = 128  # recall@10 0.97 at 2M entities (64: 0.925; benchmarks/ann.py)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise MedkgeError("an approximate index needs faiss: pip install 'medkge[ann]'") from None
    return faiss


class NearestIndex:
    """An HNSW index (faiss, inner product of unit rows: cosine) of one dim's entity rows ``[E, parts, d]``."""

    name = "hnsw"

    def __init__(self, table: Tensor, ef_search: int = EF_SEARCH):
        faiss = _faiss()
        rows = np.ascontiguousarray(table.detach().reshape(len(table), -1).float().cpu().numpy())
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-30)
        self.index = faiss.IndexHNSWFlat(rows.shape[1], M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.add(rows)
        self.index.hnsw.efSearch = ef_search
        self.size = len(rows)  # faiss holds the rows (one copy): a query's row is reconstructed from it

    def search(self, entity: int, k: int) -> tuple[list[int], list[float]]:
        """The ``k`` entities nearest to ``entity`` (itself left out), with their cosine similarities."""
        k = min(k, self.size - 1)
        params = None
        if k + 1 > self.index.hnsw.efSearch:  # HNSW returns at most efSearch neighbours
            params = _faiss().SearchParametersHNSW(efSearch=k + 1)
        query = self.index.reconstruct(int(entity)).reshape(1, -1)
        sims, ids = self.index.search(query, k + 1, params=params)
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], sims[0], strict=True) if i >= 0 and i != entity][:k]
        return [i for i, _ in pairs], [s for _, s in pairs]
