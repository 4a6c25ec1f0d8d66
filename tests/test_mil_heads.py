"""Pooling heads from the registry: shapes, attention normalisation, exact decomposition, padding invariance."""

from __future__ import annotations

import pytest
import torch

from mil.pooling import PoolingOutput, create_head, list_heads, masked_softmax, register_head

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 28
D = 12
# (registry name, extra kwargs): every registered head, plus the instance head's second pooling mode.
HEAD_CASES = [(name, {}) for name in list_heads()] + [("instance", {"pool": "attention"})]
HEAD_IDS = [name + ("-" + "-".join(f"{k}={v}" for k, v in kw.items()) if kw else "") for name, kw in HEAD_CASES]
# heads whose image logits are an attention-weighted sum of their cell logits
DECOMPOSING = [("attention", {}), ("gated_attention", {}), ("class_gated_attention", {}), ("mean", {}),
               ("instance", {"pool": "attention"})]


def _head(name: str, kwargs: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_head(name, in_features=D, num_classes=K, **kwargs).eval()


def _mask(lengths: list[int], n: int) -> torch.Tensor:
    """`B,N` validity mask of bags with the given numbers of real cells."""
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def test_registry_lists_the_seven_heads() -> None:
    assert list_heads() == ["attention", "class_gated_attention", "dual_stream", "gated_attention", "instance", "max",
                            "mean"]


@pytest.mark.parametrize(("name", "kwargs"), HEAD_CASES, ids=HEAD_IDS)
def test_head_shapes_finiteness_and_attention(name: str, kwargs: dict) -> None:
    head = _head(name, kwargs)
    lengths = [5, 2, 1]
    valid = _mask(lengths, 5)
    embeddings = torch.randn(3, 5, D)
    out = head(embeddings, valid)
    assert isinstance(out, PoolingOutput)
    assert out.image_logits.shape == (3, K)
    assert out.cell_logits.shape == (3, 5, K)
    assert out.attention.shape in {(3, 5), (3, 5, K)}
    for tensor in (out.image_logits, out.cell_logits, out.attention):
        assert torch.isfinite(tensor).all()
    attention = out.attention if out.attention.ndim == 3 else out.attention.unsqueeze(-1)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(3, attention.shape[-1]), atol=1e-6, rtol=0)
    assert (attention[~valid] == 0).all()
    assert (out.cell_logits[~valid] == 0).all()
    assert (attention >= 0).all()


@pytest.mark.parametrize(("name", "kwargs"), HEAD_CASES, ids=HEAD_IDS)
def test_padding_does_not_change_real_cells(name: str, kwargs: dict) -> None:
    """A bag alone gives the same outputs as the same bag padded inside a batch with a longer bag, whatever
    values the padded embeddings hold."""
    head = _head(name, kwargs)
    torch.manual_seed(1)
    bag = torch.randn(1, 3, D)
    alone = head(bag, torch.ones(1, 3, dtype=torch.bool))
    batch = 100 * torch.randn(2, 7, D)  # garbage (and large) at the padded positions
    batch[1, :3] = bag[0]
    padded = head(batch, _mask([7, 3], 7))
    torch.testing.assert_close(padded.image_logits[1], alone.image_logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.cell_logits[1, :3], alone.cell_logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.attention[1, :3], alone.attention[0], atol=1e-6, rtol=1e-5)
    assert (padded.attention[1, 3:] == 0).all()


@pytest.mark.parametrize(("name", "kwargs"), HEAD_CASES, ids=HEAD_IDS)
def test_padded_embeddings_get_zero_gradient(name: str, kwargs: dict) -> None:
    head = _head(name, kwargs).train()
    embeddings = torch.randn(2, 6, D, requires_grad=True)
    valid = _mask([6, 2], 6)
    head(embeddings, valid).image_logits.sum().backward()
    assert embeddings.grad is not None
    assert (embeddings.grad[~valid] == 0).all()
    assert embeddings.grad[valid].abs().sum() > 0
    for param in head.parameters():
        assert param.grad is None or torch.isfinite(param.grad).all()


@pytest.mark.parametrize(("name", "kwargs"), DECOMPOSING, ids=[n + str(k or "") for n, k in DECOMPOSING])
def test_image_logits_are_attention_weighted_cell_logits(name: str, kwargs: dict) -> None:
    head = _head(name, kwargs)
    valid = _mask([4, 1, 6], 6)
    out = head(torch.randn(3, 6, D), valid)
    weights = out.attention if out.attention.ndim == 3 else out.attention.unsqueeze(-1)
    torch.testing.assert_close((weights * out.cell_logits).sum(dim=1), out.image_logits, atol=1e-5, rtol=0)


def test_mean_head_averages_real_cells_only() -> None:
    out = _head("mean", {})(torch.randn(2, 4, D), _mask([4, 3], 4))
    torch.testing.assert_close(out.image_logits[1], out.cell_logits[1, :3].mean(dim=0), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.attention[1], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]))


def test_max_head_picks_the_best_real_cell_per_class() -> None:
    head = _head("max", {})
    embeddings = torch.randn(2, 5, D)
    embeddings[1, 3:] = 1e3  # padding that would win every class if it were looked at
    valid = _mask([5, 3], 5)
    out = head(embeddings, valid)
    expected, chosen = out.cell_logits[1, :3].max(dim=0)
    torch.testing.assert_close(out.image_logits[1], expected)
    assert (out.attention[1].argmax(dim=0) == chosen).all()
    assert (out.attention.sum(dim=1) == 1).all()


def test_instance_lse_lies_between_mean_and_max_and_follows_its_formula() -> None:
    head = _head("instance", {"sharpness": 3.0})
    valid = _mask([4, 2], 4)
    out = head(torch.randn(2, 4, D), valid)
    cells = out.cell_logits[0]
    expected = (torch.logsumexp(3.0 * cells, dim=0) - torch.log(torch.tensor(4.0))) / 3.0
    torch.testing.assert_close(out.image_logits[0], expected, atol=1e-5, rtol=0)
    assert (out.image_logits[0] >= cells.mean(dim=0) - 1e-5).all()
    assert (out.image_logits[0] <= cells.max(dim=0).values + 1e-5).all()


def test_unknown_head_name_lists_the_registered_heads() -> None:
    with pytest.raises(ValueError) as info:
        create_head("transformer", in_features=D, num_classes=K)
    assert str(info.value) == (
        "unknown pooling head 'transformer'; registered heads: "
        "attention, class_gated_attention, dual_stream, gated_attention, instance, max, mean"
    )


def test_none_kwargs_are_dropped_and_others_reach_the_head() -> None:
    default = create_head("attention", in_features=D, num_classes=K, hidden=None, dropout=None)
    assert default.scorer.value[0].out_features == 128
    assert default.dropout.p == 0.0
    custom = create_head("attention", in_features=D, num_classes=5, hidden=16, dropout=0.25)
    assert custom.scorer.value[0].out_features == 16
    assert custom.dropout.p == 0.25
    assert custom.classifier.out_features == 5
    assert create_head("instance", in_features=D, num_classes=K, pool=None).pool_kind == "lse"


def test_gated_and_plain_attention_differ_only_by_the_gate() -> None:
    assert create_head("gated_attention", in_features=D, num_classes=K).scorer.gate is not None
    assert create_head("attention", in_features=D, num_classes=K).scorer.gate is None


def test_instance_head_rejects_an_unknown_pool() -> None:
    with pytest.raises(ValueError, match="instance head pool must be 'lse' or 'attention', got 'max'"):
        create_head("instance", in_features=D, num_classes=K, pool="max")


def test_registering_a_name_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="pooling head 'mean' is already registered"):
        register_head("mean")(torch.nn.Identity)


def test_masked_softmax_is_zero_at_padding_for_both_shapes() -> None:
    mask = _mask([2, 3], 3)
    flat = masked_softmax(torch.tensor([[0.0, 0.0, 50.0], [1.0, 2.0, 3.0]]), mask)
    torch.testing.assert_close(flat[0], torch.tensor([0.5, 0.5, 0.0]))
    per_class = masked_softmax(torch.zeros(2, 3, 4), mask)
    torch.testing.assert_close(per_class[0, :, 0], torch.tensor([0.5, 0.5, 0.0]))
    torch.testing.assert_close(per_class[1].sum(dim=0), torch.ones(4))
