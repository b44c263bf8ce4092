from __future__ import annotations

import asyncio

import torch

from medkge import Dataset


def random_dataset(num_entities: int = 12, num_relations: int = 3, sizes=(60, 15, 15), seed: int = 0) -> Dataset:
    """A small random graph with ids for labels ("e0", "r0", ...); splits share no triple."""
    g = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    triples = torch.stack(
        [
            torch.randint(num_entities, (total * 3,), generator=g),
            torch.randint(num_relations, (total * 3,), generator=g),
            torch.randint(num_entities, (total * 3,), generator=g),
        ],
        1,
    )
    triples = torch.unique(triples, dim=0)
    triples = triples[torch.randperm(len(triples), generator=g)][:total]
    train, valid, test = torch.split(triples, list(sizes))
    return Dataset(
        "random",
        [f"e{i}" for i in range(num_entities)],
        [f"r{i}" for i in range(num_relations)],
        train.clone(),
        valid.clone(),
        test.clone(),
    )


def train_tiny(out, **options):
    """A tiny run on Nations (2 epochs, small batches, few negatives), options overriding; no progress bars."""
    import medkge

    defaults = {"dataset": "nations", "epochs": 2, "batch_size": 256, "negatives": 4, "eval_every": 1}
    return medkge.train(**(defaults | options), out=out, progress=False)


class AppClient:
    """A FastAPI app served in process through httpx's ASGI transport, its lifespan included: what Starlette's
    TestClient did, whose httpx backend is deprecated. ``with AppClient(app) as client: client.get(...)``."""

    def __init__(self, app):
        import httpx

        self.app, self.loop = app, asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://medkge")

    def __enter__(self) -> AppClient:
        self.lifespan = self.app.router.lifespan_context(self.app)
        self.loop.run_until_complete(self.lifespan.__aenter__())
        return self

    def get(self, url: str, **options):
        return self.loop.run_until_complete(self.client.get(url, **options))

    def __exit__(self, *exc) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.lifespan.__aexit__(None, None, None))
        self.loop.close()
