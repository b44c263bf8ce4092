"""Recommendation benchmark on a SYNTHETIC user-item-attribute graph: ndcg@5 per dim, MED against DT.

The paper's industrial case (ndcg@5 of product recommendation on a private Taobao graph) cannot be
reproduced: that graph is not public, and the public user-item datasets we know of forbid redistribution.
This script generates a stand-in with planted preferences instead, so every figure from it is about a
synthetic graph, not about real users:

- items have a category, a brand and a price band (relations has_category, has_brand, has_price);
- each user has planted tastes: one or two favourite categories, two favourite brands, a price band;
- a user interacts (relation ``interact``) with items drawn without replacement with probability
  proportional to exp(3 [category liked] + 1.5 [brand liked] + 1 [price band liked]);
- each user's interactions are split 70 / 10 / 20 into train, valid, test; every attribute triple is in train.

MED (one run, every dim) and DT (one model per dim) train on it with the same epochs, batch, negatives,
learning rate and seed, for a fixed number of epochs (no early stopping: nothing is chosen on test). Then
every user's test items are ranked among all items, with their train and valid items filtered out
(``medkge evaluate RUN --candidates tails:interact``), and ndcg@5 (also recall@10) is reported per dim.
Two references put the figures in scale: the popularity ranking (train interactions per item, the same for
every user) and the oracle that ranks by the planted preference weights themselves.

    python benchmarks/recommend.py                      # the README's table: about 5 minutes on 1 thread
    python benchmarks/recommend.py --users 200 --items 200 --epochs 40 --dims 10,40
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import medkge
from medkge.datasets import write_triples
from medkge.recommend import Candidates, evaluate_recommendation

CATEGORIES, BRANDS, PRICES = 8, 20, 4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--items", type=int, default=400)
    p.add_argument("--per-user", default="12:30", help="interactions per user, drawn uniformly in MIN:MAX")
    p.add_argument("--model", default="rotate")
    p.add_argument("--dims", default="10,20,40,80,160")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--negatives", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--split", default="test", choices=("test", "valid"), help="valid: to choose settings")
    p.add_argument("--out", help="keep the graph and the two runs in this folder (default: a temporary one)")
    return p.parse_args()


def make_graph(args: argparse.Namespace, folder: Path) -> dict:
    """Write train/valid/test of the synthetic graph into ``folder``; returns the planted preference weights."""
    g = torch.Generator().manual_seed(args.seed)
    users, items = args.users, args.items
    category = torch.randint(CATEGORIES, (items,), generator=g)
    brand = torch.randint(BRANDS, (items,), generator=g)
    price = torch.randint(PRICES, (items,), generator=g)
    likes_category = torch.zeros(users, CATEGORIES, dtype=torch.bool)
    likes_brand = torch.zeros(users, BRANDS, dtype=torch.bool)
    for u in range(users):
        n = 1 + int(torch.randint(2, (1,), generator=g))
        likes_category[u, torch.randperm(CATEGORIES, generator=g)[:n]] = True
        likes_brand[u, torch.randperm(BRANDS, generator=g)[:2]] = True
    likes_price = torch.randint(PRICES, (users,), generator=g)
    weight = (
        3.0 * likes_category[:, category].double()
        + 1.5 * likes_brand[:, brand].double()
        + 1.0 * (likes_price[:, None] == price[None, :]).double()
    )  # [users, items]
    low, high = (int(x) for x in args.per_user.split(":"))
    splits: dict[str, list[tuple[str, str, str]]] = {"train": [], "valid": [], "test": []}
    for u in range(users):
        count = int(torch.randint(low, high + 1, (1,), generator=g))
        chosen = torch.multinomial(weight[u].exp(), count, replacement=False, generator=g).tolist()
        n_test, n_valid = max(1, round(0.2 * count)), max(1, round(0.1 * count))
        for i, item in enumerate(chosen):
            split = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
            splits[split].append((f"user{u}", "interact", f"item{item}"))
    for i in range(items):
        splits["train"] += [
            (f"item{i}", "has_category", f"category{int(category[i])}"),
            (f"item{i}", "has_brand", f"brand{int(brand[i])}"),
            (f"item{i}", "has_price", f"price{int(price[i])}"),
        ]
    folder.mkdir(parents=True, exist_ok=True)
    for split, triples in splits.items():
        write_triples(folder / f"{split}.txt", triples)
    return {"weight": weight, "splits": splits}


def per_user_ndcg(scores: torch.Tensor, dataset: medkge.Dataset, items: list[int], k: int, split: str) -> list[float]:
    """ndcg@k of each user with a test (or valid) item, from a [users, items] score matrix, by a plain loop
    over the candidate ``items`` (the popularity and oracle rankings, and a check of the trained models')."""
    seen: dict[int, set[int]] = {}
    relevant: dict[int, set[int]] = {}
    for name in ("train", "valid", "test"):
        store = relevant if name == split else seen
        for h, r, t in dataset.split(name).tolist():
            if dataset.relations[r] == "interact":
                user, item = (int(dataset.entities[x][4:]) for x in (h, t))  # "user12" -> 12, "item7" -> 7
                store.setdefault(user, set()).add(item)
    values = []
    for user, answers in sorted(relevant.items()):
        ranked = sorted(items, key=lambda i: -float(scores[user, i]))
        listed = [i for i in ranked if i in answers or i not in seen.get(user, set())]
        dcg = sum(1 / math.log2(p + 2) for p, item in enumerate(listed[:k]) if item in answers)
        values.append(dcg / sum(1 / math.log2(p + 2) for p in range(min(k, len(answers)))))
    return values


def model_scores(run: medkge.Run, dim: int, dataset: medkge.Dataset, users: int, items: int) -> torch.Tensor:
    """[users, items] scores of (user, interact, item) by the run's ``dim``-d model."""
    user_ids = torch.tensor([dataset.entity_ids[f"user{u}"] for u in range(users)])
    item_ids = torch.tensor([dataset.entity_ids[f"item{i}"] for i in range(items)])
    relation = torch.full_like(user_ids, dataset.relation_ids["interact"])
    return run.model_for(dim).score_t(user_ids, relation, item_ids)[..., 0]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    dims = [int(d) for d in args.dims.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out or tmp)
        planted = make_graph(args, base / "graph")
        dataset = medkge.load_dataset(base / "graph")
        counts = {s: len(dataset.split(s)) for s in ("train", "valid", "test")}
        print(
            f"SYNTHETIC user-item graph (not real data): {args.users} users, {args.items} items, "
            f"{CATEGORIES} categories, {BRANDS} brands, {PRICES} price bands; {dataset.num_entities} entities, "
            f"triples train/valid/test {counts['train']:,}/{counts['valid']:,}/{counts['test']:,}"
        )
        print(
            f"{args.model}, dims {dims}, {args.epochs} epochs, lr {args.lr}, batch {args.batch_size}, "
            f"{args.negatives} negatives, seed {args.seed}, {torch.get_num_threads()} torch thread(s), "
            f"load average {os.getloadavg()[0]:.1f} at start"
        )
        candidates = Candidates.tails_of(dataset, ["interact"])
        items = sorted(int(dataset.entities[i][4:]) for i in candidates.entities.tolist())
        metrics, seconds, per_user = {}, {}, {}
        for method in ("med", "dt"):
            began = time.perf_counter()
            run = medkge.train(
                dataset=str(base / "graph"),
                method=method,
                model=args.model,
                dims=dims,
                epochs=args.epochs,
                lr=args.lr,
                batch_size=args.batch_size,
                negatives=args.negatives,
                seed=args.seed,
                eval_every=0,  # a fixed number of epochs, the last model: nothing is chosen on any split
                out=base / method,
                progress=False,
                **{"train.threads": args.threads, "eval.test": False},
            )
            seconds[method] = time.perf_counter() - began
            metrics[method] = evaluate_recommendation(
                run, split=args.split, candidates=candidates, ks=(5, 10), progress=False
            )
            for d in dims:  # the same figure by a plain loop, per user (for the paired differences below)
                scores = model_scores(run, d, dataset, args.users, args.items)
                per_user[method, d] = per_user_ndcg(scores, dataset, items, 5, args.split)
                check = sum(per_user[method, d]) / len(per_user[method, d])
                assert abs(check - metrics[method][d]["ndcg@5"]) < 1e-6, (method, d, check)
            print(f"  {method}: trained in {seconds[method]:.0f} s", flush=True)

        popularity = torch.zeros(args.items)
        for _, r, t in dataset.train.tolist():
            if dataset.relations[r] == "interact":
                popularity[int(dataset.entities[t][4:])] += 1
        popular = statistics.mean(per_user_ndcg(popularity.expand(args.users, -1), dataset, items, 5, args.split))
        oracle = statistics.mean(per_user_ndcg(planted["weight"], dataset, items, 5, args.split))

        users, ranked = metrics["med"][dims[0]]["lists"], len(candidates.entities)
        others = "train and valid" if args.split == "test" else "train and test"
        print(f"\n{args.split}: {users} users, each ranking the {ranked} items (its {others} items filtered out);")
        print(f"training took {seconds['med']:.0f} s for MED, {seconds['dt']:.0f} s for DT")
        print("(MED - DT: the mean over users of the paired difference in ndcg@5, +- two standard errors)\n")
        print("| dim | MED ndcg@5 | DT ndcg@5 | MED - DT | MED recall@10 | DT recall@10 |")
        print("|---:|---:|---:|---:|---:|---:|")
        for d in dims:
            med, dt = metrics["med"][d], metrics["dt"][d]
            diff = [a - b for a, b in zip(per_user["med", d], per_user["dt", d], strict=True)]
            error = 2 * statistics.stdev(diff) / math.sqrt(len(diff))
            print(
                f"| {d} | {med['ndcg@5']:.3f} | {dt['ndcg@5']:.3f} | {statistics.mean(diff):+.3f} +- {error:.3f} | "
                f"{med['recall@10']:.3f} | {dt['recall@10']:.3f} |"
            )
        print(f"\nreferences: popularity ndcg@5 {popular:.3f}, oracle (the planted weights) ndcg@5 {oracle:.3f}")


if __name__ == "__main__":
    main()
