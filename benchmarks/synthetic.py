"""A synthetic knowledge graph with planted structure, at any size (benchmarks/scale.py, distributed.py).

Entities fall into latent clusters; every relation maps the head's cluster to one tail cluster (a fixed
random map per relation), and the tail is drawn from that cluster by popularity. Heads are drawn by a
power law over all entities, tails by a power law within their cluster, so degrees are heavy-tailed as in
real graphs. Half of the relations are the inverses of the other half: a triple (h, r, t) of a base
relation also appears as (t, r_inverse, h) with probability ``inverse_rate``. A model can therefore learn
the cluster maps (TransE and RotatE express them as translations/rotations of cluster centres) and the
inverse pairs (RotatE: a rotation and its opposite), so link prediction is well above random, while
nothing about the graph is hand-made to suit one model.

    python benchmarks/synthetic.py --entities 2000000 --triples 15000000 --out /tmp/syn-2m

writes train.txt, valid.txt and test.txt (``e<id> <TAB> r<id> <TAB> e<id>``) in seconds to minutes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class SyntheticGraph:
    """Triples ``[N, 3]`` (int64 ids h, r, t) split into train/valid/test, and the sizes they were drawn for."""

    num_entities: int
    num_relations: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def generate(
    num_entities: int,
    num_triples: int,
    num_relations: int = 40,
    *,
    clusters: int | None = None,
    skew: float = 2.0,
    inverse_rate: float = 0.5,
    eval_triples: int = 5000,
    seed: int = 0,
) -> SyntheticGraph:
    """A graph of about ``num_triples`` distinct triples (duplicates drawn are dropped).

    ``skew`` > 1 makes popularity heavier-tailed (an index drawn as ``floor(n * u ** skew)``);
    ``clusters`` defaults to about sqrt(entities); valid and test get ``eval_triples`` each.
    """
    if num_relations < 2 or num_relations % 2:
        raise ValueError("num_relations must be even (base relations and their inverses)")
    rng = np.random.default_rng(seed)
    clusters = clusters or max(2, round(num_entities**0.5))
    base = num_relations // 2
    # entities sorted by cluster: cluster c holds positions [start[c], start[c + 1]) of `members`
    members = rng.permutation(num_entities)
    start = np.linspace(0, num_entities, clusters + 1).astype(np.int64)
    cluster_of = np.empty(num_entities, dtype=np.int64)
    cluster_of[members] = np.repeat(np.arange(clusters), np.diff(start))
    maps = rng.integers(0, clusters, size=(base, clusters))  # relation r sends cluster c to maps[r, c]
    popular = rng.permutation(num_entities)  # heads: popular[floor(E * u^skew)]

    # draw base triples, then inverse copies, then de-duplicate; draw a little more than needed
    drawn = int(num_triples / (1 + inverse_rate) * 1.15) + 16
    h = popular[(num_entities * rng.random(drawn) ** skew).astype(np.int64)]
    r = rng.integers(0, base, size=drawn)
    target = maps[r, cluster_of[h]]
    size = start[target + 1] - start[target]
    t = members[start[target] + (size * rng.random(drawn) ** skew).astype(np.int64)]
    twin = rng.random(drawn) < inverse_rate
    h, r, t = (np.concatenate([x, y]) for x, y in ((h, t[twin]), (r, r[twin] + base), (t, h[twin])))
    keys = (h * num_relations + r) * num_entities + t
    keys = np.unique(keys)  # sorted: shuffle before splitting
    rng.shuffle(keys)
    keys = keys[:num_triples]
    triples = np.stack(
        [keys // (num_relations * num_entities), keys // num_entities % num_relations, keys % num_entities], 1
    )
    n_eval = min(eval_triples, len(triples) // 10)
    return SyntheticGraph(
        num_entities,
        num_relations,
        triples[2 * n_eval :],
        triples[:n_eval],
        triples[n_eval : 2 * n_eval],
    )


def write(graph: SyntheticGraph, folder: Path) -> None:
    """Write the splits as ``e<h> <TAB> r<r> <TAB> e<t>`` lines (pyarrow's CSV writer: seconds for 50M lines)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    folder.mkdir(parents=True, exist_ok=True)
    options = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    for split in ("train", "valid", "test"):
        x = getattr(graph, split)
        columns = [
            pc.binary_join_element_wise(prefix, pc.cast(pa.array(x[:, i]), pa.string()), "")
            for i, prefix in enumerate(("e", "r", "e"))
        ]
        table = pa.table(columns, names=["h", "r", "t"])
        pcsv.write_csv(table, folder / f"{split}.txt", write_options=options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entities", type=int, required=True)
    p.add_argument("--triples", type=int, required=True)
    p.add_argument("--relations", type=int, default=40)
    p.add_argument("--eval-triples", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    started = time.perf_counter()
    graph = generate(args.entities, args.triples, args.relations, eval_triples=args.eval_triples, seed=args.seed)
    drawn = time.perf_counter()
    write(graph, args.out)
    print(
        f"{len(graph.train):,} train, {len(graph.valid):,} valid, {len(graph.test):,} test triples; "
        f"generated in {drawn - started:.1f} s, written in {time.perf_counter() - drawn:.1f} s to {args.out}"
    )


if __name__ == "__main__":
    main()
