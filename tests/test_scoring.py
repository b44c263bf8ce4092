"""The one-pass engine computes exactly what a naive model per sub-model would."""

from __future__ import annotations

import pytest
import torch

from medkge import MODELS, CroppableModel
from medkge.scoring import Prefix, get_interaction, plain_scores, training_scores

from .reference import reference_all, reference_scores

CONFIGS = [(name, 1) for name in MODELS] + [("transe", 2)]
DIMS = (3, 5, 8, 12)  # uneven on purpose: segment width 1, not a multiple pattern


def make_model(name: str, p: int = 1, dims=DIMS, num_entities: int = 9, num_relations: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = CroppableModel(name, num_entities, num_relations, dims, gamma=4.0, p=p, generator=g).double()
    with torch.no_grad():  # larger values than the initialisation, so that every coordinate matters
        model.entity.uniform_(-1, 1, generator=g)
        model.relation.uniform_(-1, 1, generator=g)
    return model


def all_triples(model: CroppableModel) -> torch.Tensor:
    e, r = model.num_entities, model.num_relations
    grid = torch.cartesian_prod(torch.arange(e), torch.arange(r), torch.arange(e))
    return grid


@pytest.mark.parametrize(("name", "p"), CONFIGS)
@pytest.mark.parametrize("dims", [DIMS, (10, 20, 30, 40), (40,)])
def test_triple_scores_equal_naive_sub_models(name, p, dims):
    model = make_model(name, p, dims)
    hrt = all_triples(model)
    torch.testing.assert_close(model.score_hrt(hrt), reference_all(model, hrt), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("name", "p"), CONFIGS)
def test_all_entity_scores_equal_naive_sub_models(name, p):
    model = make_model(name, p)
    h = torch.tensor([0, 3, 8, 3])
    r = torch.tensor([1, 0, 3, 2])
    t = torch.tensor([2, 2, 7, 0])
    tails = model.score_t(h, r)  # [4, E, n]
    heads = model.score_h(r, t)
    e = torch.arange(model.num_entities)
    for i in range(len(h)):
        hrt_tail = torch.stack([h[i].expand_as(e), r[i].expand_as(e), e], 1)
        hrt_head = torch.stack([e, r[i].expand_as(e), t[i].expand_as(e)], 1)
        torch.testing.assert_close(tails[i], reference_all(model, hrt_tail), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(heads[i], reference_all(model, hrt_head), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("name", "p"), CONFIGS)
def test_blocked_scoring_does_not_depend_on_block_size(name, p):
    model = make_model(name, p, num_entities=50)
    h, r = torch.arange(7), torch.arange(7) % 4
    full = model.score_t(h, r)
    from medkge.model import BlockScorer

    scorer = BlockScorer(model, budget=1)  # one query, one candidate per block
    assert scorer.block_shape(7, 50) == (1, 1)
    query, r_rows = scorer.queries("tail", h, r)
    pieces = torch.cat([scorer.block("tail", query, r_rows, slice(c, c + 1)) for c in range(50)], 1)
    torch.testing.assert_close(pieces, full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "p"), CONFIGS)
@pytest.mark.parametrize("d", [1, 3, 7, 12])
def test_crop_gives_the_sub_model_scores(name, p, d):
    model = make_model(name, p)
    hrt = all_triples(model)
    cropped = model.crop(d)
    assert cropped.dims == (d,) and cropped.entity.shape[-1] == d
    torch.testing.assert_close(cropped.score_hrt(hrt)[:, 0], reference_scores(model, hrt, d), rtol=1e-10, atol=1e-10)
    if d in model.dims:
        torch.testing.assert_close(cropped.score_hrt(hrt, dim=d), model.score_hrt(hrt, dim=d), rtol=1e-12, atol=1e-12)
        e = torch.arange(3)
        torch.testing.assert_close(cropped.score_t(e, e, dim=d), model.score_t(e, e, dim=d), rtol=1e-12, atol=1e-12)


def test_cropped_pairre_does_not_normalise_again():
    model = make_model("pairre")
    cropped = model.crop(5)
    assert not cropped.normalize_entities
    norms = torch.linalg.vector_norm(model.entity_table().detach(), dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize(("name", "p"), CONFIGS)
def test_gradients_reach_exactly_the_coordinates_a_sub_model_uses(name, p):
    model = make_model(name, p)
    hrt = all_triples(model)
    for i, d in enumerate(model.dims):
        model.zero_grad()
        model.score_hrt(hrt)[:, i].sum().backward()
        for table in (model.entity, model.relation):
            used = table.grad[..., :d].abs().sum(dim=(0, 1))
            assert (used > 0).all(), f"{name}: a coordinate below {d} got no gradient"
            if model.normalize_entities and table is model.entity:
                continue  # normalisation over the full width couples all coordinates
            assert (table.grad[..., d:] == 0).all(), f"{name}: coordinates past {d} got gradient"


def test_prefix_reads_sums_at_each_dim():
    terms = torch.arange(1.0, 13.0).double()  # 1..12
    for dims in [(3, 5, 8, 12), (12,), (4, 8, 12), (1, 2, 3, 12)]:
        expected = torch.tensor([terms[:d].sum() for d in dims], dtype=torch.float64)
        torch.testing.assert_close(Prefix(dims)(terms), expected)


@pytest.mark.parametrize("dims", [[], [0, 5], [5, 5], [10, 5], "abc"])
def test_invalid_dims_are_refused(dims):
    from medkge import MedkgeError

    with pytest.raises(MedkgeError):
        CroppableModel("rotate", 4, 2, dims)


def test_unknown_model_and_bad_ids_give_clear_errors():
    from medkge import MedkgeError

    with pytest.raises(MedkgeError, match="unknown model"):
        CroppableModel("transh", 4, 2, [4])
    model = CroppableModel("distmult", 4, 2, [4])
    with pytest.raises(MedkgeError, match="out of range"):
        model.score_hrt(torch.tensor([[0, 2, 1]]))
    with pytest.raises(MedkgeError, match="not a sub-model"):
        model.score_hrt(torch.tensor([[0, 1, 1]]), dim=3)
    with pytest.raises(MedkgeError, match="between 1 and 4"):
        model.crop(5)


@pytest.mark.parametrize(("name", "p"), CONFIGS)
@pytest.mark.parametrize("dims", [DIMS, (10, 20, 30, 40), (40,)])
def test_training_path_gradients_equal_autograd_through_the_plain_composition(name, p, dims):
    model = make_model(name, p, dims)
    g = torch.Generator().manual_seed(1)
    groups = [
        ("tail", torch.tensor([0, 3, 8]), torch.tensor([1, 0, 3]), torch.randint(9, (3, 5), generator=g)),
        ("head", torch.tensor([2, 2]), torch.tensor([2, 3]), torch.randint(9, (2, 5), generator=g)),
    ]
    weights = torch.randn(5, 5, len(dims), generator=g, dtype=torch.float64)

    def gradients():
        model.zero_grad()
        scores = model.score_groups(groups)
        (scores * weights).sum().backward()
        return scores.detach(), model.entity.grad.clone(), model.relation.grad.clone()

    fused = gradients()
    model.fused_kernels = False  # the plain reference: autograd through finish(prefix(terms)), one gather
    plain = gradients()
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "p"), [("transe", 1), ("transe", 2), ("rotate", 1), ("distmult", 1), ("simple", 1)])
def test_training_scores_handle_broadcast_and_a_width_below_the_tables(name, p):
    it = get_interaction(name, p)
    g = torch.Generator().manual_seed(2)
    parts = 2 if it.kernel in ("cabs", "dot") else 1
    query = torch.randn(4, 1, parts, 9, generator=g, dtype=torch.float64, requires_grad=True)
    candidate = torch.randn(4, 3, parts, 9, generator=g, dtype=torch.float64, requires_grad=True)
    prefix = Prefix((2, 6))  # reads 6 of the 9 coordinates; segments of 2
    margins = torch.tensor([1.0, 3.0], dtype=torch.float64)
    weights = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    inputs = (query, candidate)
    fused = training_scores(it, query, candidate, prefix, margins)
    plain = plain_scores(it, query, candidate, prefix, margins)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    fused_grads = torch.autograd.grad((fused * weights).sum(), inputs)
    plain_grads = torch.autograd.grad((plain * weights).sum(), inputs)
    for a, b in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert (fused_grads[1][..., 6:] == 0).all()


def test_prefix_read_along_an_outer_axis_equals_cumsum():
    g = torch.Generator().manual_seed(4)
    prefix = Prefix((2, 4, 8))  # segments of 2: four of them, read at 0, 1, 3
    sums = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    expected = sums.cumsum(0)[[0, 1, 3]]
    kept = sums.clone()
    torch.testing.assert_close(prefix.read(sums, dim=0), expected)
    assert torch.equal(sums, kept)  # not in place unless asked
    torch.testing.assert_close(prefix.read(sums, dim=0, inplace=True), expected)


def test_prefix_read_along_an_outer_axis_passes_gradients():
    sums = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 3, dtype=torch.float64)
    prefix = Prefix((2, 4, 8))
    (grad,) = torch.autograd.grad((prefix.read(sums * 1.0, dim=0) * weights).sum(), sums)
    (expected,) = torch.autograd.grad((sums.cumsum(0)[[0, 1, 3]] * weights).sum(), sums)
    torch.testing.assert_close(grad, expected)
