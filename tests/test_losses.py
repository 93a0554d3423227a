"""Loss terms: values on hand-made cases, finite gradients on degenerate batches, clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainer.losses import (
    ClusterContrastiveLoss,
    GroupMatchingLoss,
    PairContrastiveLoss,
    UncertaintyAwareContrastiveLoss,
)


def _emb(n: int, d: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=gen), dim=1).requires_grad_(True)


def _grad_ok(loss: torch.Tensor, *leaves: torch.Tensor) -> None:
    assert torch.isfinite(loss)
    loss.backward()
    for leaf in leaves:
        assert leaf.grad is not None
        assert torch.isfinite(leaf.grad).all()


# ---- cluster-contrastive ------------------------------------------------------------------------------


def test_cluster_memory_initialise_sets_normalised_centroids() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.0, -1.0]])
    labels = torch.tensor([0, 0, 1, -1])
    loss = ClusterContrastiveLoss(2, 2)
    loss.initialise(x, labels)
    assert torch.allclose(loss.memory[0], F.normalize(torch.tensor([2.0, 0.2]), dim=0))
    assert torch.allclose(loss.memory[1], torch.tensor([0.0, 1.0]))


def test_cluster_loss_prefers_the_right_centroid() -> None:
    memory_x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = ClusterContrastiveLoss(2, 2, temperature=0.05)
    loss.initialise(memory_x, torch.tensor([0, 1]))
    right = loss(memory_x, torch.tensor([0, 1]))
    wrong = loss(memory_x, torch.tensor([1, 0]))
    assert right < 1e-6
    assert wrong > 10.0  # 1/0.05 logit gap


def test_cluster_momentum_update_follows_formula() -> None:
    loss = ClusterContrastiveLoss(2, 2, momentum=0.2)
    loss.initialise(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    loss.update(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    expected = F.normalize(torch.tensor([0.2, 0.8]), dim=0)
    assert torch.allclose(loss.memory[0], expected)
    assert torch.allclose(loss.memory[1], torch.tensor([0.0, 1.0]))  # untouched


def test_cluster_loss_degenerate_batches_have_finite_grads() -> None:
    loss = ClusterContrastiveLoss(3, 8)
    x = _emb(5)
    loss.initialise(x.detach(), torch.tensor([0, 1, 2, 0, 1]))
    all_outliers = loss(x, torch.full((5,), -1))
    assert all_outliers.detach().item() == 0.0
    _grad_ok(all_outliers, x)
    one_class = ClusterContrastiveLoss(1, 8)
    y = _emb(4, seed=1)
    one_class.initialise(y.detach(), torch.zeros(4, dtype=torch.long))
    _grad_ok(one_class(y, torch.zeros(4, dtype=torch.long)), y)


def test_cluster_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_clusters"):
        ClusterContrastiveLoss(0, 4)
    with pytest.raises(ValueError, match="temperature"):
        ClusterContrastiveLoss(2, 4, temperature=0.0)
    with pytest.raises(ValueError, match="momentum"):
        ClusterContrastiveLoss(2, 4, momentum=1.0)
    loss = ClusterContrastiveLoss(2, 8)
    with pytest.raises(ValueError, match="labels"):
        loss(_emb(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        loss(_emb(2), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="columns"):
        loss(_emb(2, d=4), torch.tensor([0, 1]))


# ---- pair loss ----------------------------------------------------------------------------------------


def test_pair_loss_values() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    same = torch.tensor([True, False, False])
    loss = PairContrastiveLoss(margin=0.3)(a, b, same)
    # ML at cos 0 -> 1; CL at cos 0 -> 0 (below margin); CL at cos 1 -> 0.7
    assert math.isclose(float(loss), (1.0 + 0.0 + 0.7) / 3, rel_tol=1e-6)


def test_pair_loss_gradient_pulls_must_links_together() -> None:
    a = _emb(4)
    b = _emb(4, seed=3)
    loss = PairContrastiveLoss()(a, b, torch.ones(4, dtype=torch.bool))
    _grad_ok(loss, a, b)
    with torch.no_grad():
        before = (a * b).sum(1)
        after = (F.normalize(a - 0.1 * a.grad, dim=1) * F.normalize(b - 0.1 * b.grad, dim=1)).sum(1)
    assert (after > before).all()


def test_pair_loss_empty_and_bad_input() -> None:
    a = torch.zeros(0, 4, requires_grad=True)
    _grad_ok(PairContrastiveLoss()(a, a, torch.zeros(0, dtype=torch.bool)), a)
    with pytest.raises(ValueError, match="margin"):
        PairContrastiveLoss(margin=1.5)
    with pytest.raises(ValueError, match="same shape"):
        PairContrastiveLoss()(_emb(3), _emb(2), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same must"):
        PairContrastiveLoss()(_emb(3), _emb(3), torch.ones(2, dtype=torch.bool))


# ---- uncertainty-aware contrastive ---------------------------------------------------------------------


def test_ua_loss_matches_hand_computation() -> None:
    anchors = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    views = anchors.clone()
    weak = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    tau, alpha = 0.5, 0.1
    got = UncertaintyAwareContrastiveLoss(tau, alpha)(anchors, views, None, weak, None)
    sim = anchors @ views.t()
    logp = F.log_softmax(sim / tau, dim=1)
    u01 = max(0.0, float(sim[0, 0] - sim[0, 1]))
    u10 = max(0.0, float(sim[1, 1] - sim[1, 0]))
    w01, w10 = math.exp(-u01), math.exp(-u10)
    l0 = -(logp[0, 0] + w01 * logp[0, 1]) / (1 + w01)
    l1 = -(logp[1, 1] + w10 * logp[1, 0]) / (1 + w10)
    l2 = -logp[2, 2]
    expected = (l0 + l1 + l2) / 3 + alpha * (u01 + u10) / 2
    assert math.isclose(float(got), float(expected), rel_tol=1e-5)


def test_ua_without_paired_view_is_weighted_supcon_over_other_rows() -> None:
    anchors = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    views = F.normalize(torch.tensor([[0.9, 0.1], [0.5, 0.9], [0.1, 1.0]]), dim=1)
    weak = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    tau = 0.5
    got = UncertaintyAwareContrastiveLoss(tau, alpha=0.0, paired_weight=0.0)(anchors, views, None, weak)
    sim = anchors @ views.t()
    logits = (sim / tau).masked_fill(torch.eye(3, dtype=torch.bool), float("-inf"))
    logp = F.log_softmax(logits, dim=1)
    # rows 0 and 1 have one weak positive each (the weight cancels); row 2 has none and is skipped
    expected = -(logp[0, 1] + logp[1, 0]) / 2
    assert math.isclose(float(got), float(expected), rel_tol=1e-5)
    lonely = _emb(3)
    loss = UncertaintyAwareContrastiveLoss(paired_weight=0.0)(lonely, lonely.detach().clone())
    assert loss.detach().item() == 0.0
    _grad_ok(loss, lonely)
    with pytest.raises(ValueError, match="paired_weight"):
        UncertaintyAwareContrastiveLoss(paired_weight=-1.0)


def test_ua_weight_is_detached_and_regulariser_pulls_weak_positive_closer() -> None:
    anchors = _emb(2)
    views = anchors.detach().clone().requires_grad_(True)
    weak = torch.tensor([[False, True], [True, False]])
    loss = UncertaintyAwareContrastiveLoss(temperature=1.0, alpha=5.0)(anchors, views, None, weak)
    _grad_ok(loss, anchors, views)
    with torch.no_grad():
        before = float(anchors[0] @ anchors[1])
        a2 = F.normalize(anchors - 0.05 * anchors.grad, dim=1)
        after = float(a2[0] @ a2[1])
    assert after > before


def test_ua_forced_negative_overrides_weak_and_strong() -> None:
    anchors = _emb(3)
    views = anchors.detach().clone()
    everything = torch.ones(3, 3, dtype=torch.bool)
    forced = torch.zeros(3, 3, dtype=torch.bool)
    forced[0, 1] = forced[1, 0] = True
    ua = UncertaintyAwareContrastiveLoss(alpha=0.0)
    with_neg = ua(anchors, views, everything, None, forced)
    without = ua(anchors, views, everything & ~forced, None, None)
    assert torch.allclose(with_neg, without)


def test_ua_degenerate_batches() -> None:
    x = _emb(1)
    _grad_ok(UncertaintyAwareContrastiveLoss()(x, x.detach().clone()), x)  # one row, no weak positive
    y = _emb(4, seed=2)
    all_same = torch.ones(4, 4, dtype=torch.bool)
    _grad_ok(UncertaintyAwareContrastiveLoss()(y, y.detach().clone(), None, all_same), y)  # one class
    z = torch.zeros(0, 8, requires_grad=True)
    _grad_ok(UncertaintyAwareContrastiveLoss()(z, z), z)


def test_ua_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        UncertaintyAwareContrastiveLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        UncertaintyAwareContrastiveLoss(temperature=-0.1)
    with pytest.raises(ValueError, match="weak"):
        UncertaintyAwareContrastiveLoss()(_emb(3), _emb(3), None, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="anchors"):
        UncertaintyAwareContrastiveLoss()(torch.zeros(3), torch.zeros(3))


# ---- group-wise matching ------------------------------------------------------------------------------


def test_gm_samples_at_most_k_negatives_never_same_identity() -> None:
    sim = torch.rand(6, 10, generator=torch.Generator().manual_seed(0))
    same = torch.zeros(6, 10, dtype=torch.bool)
    same[:, :3] = True
    picked = GroupMatchingLoss(hard_negatives=4).sample_negatives(sim, same, torch.Generator().manual_seed(1))
    assert (picked.sum(1) == 4).all()
    assert not (picked & same).any()
    few = torch.ones(2, 3, dtype=torch.bool)
    few[:, 2] = False  # one allowed negative per row
    picked = GroupMatchingLoss(hard_negatives=4).sample_negatives(torch.rand(2, 3), few, None)
    assert picked.sum().item() == 2 and picked[:, 2].all()


def test_gm_prefers_hard_negatives() -> None:
    # candidate 1 is far more similar than 2..9: with τ small it must be drawn every time
    sim = torch.full((1, 10), -0.5)
    sim[0, 0], sim[0, 1] = 1.0, 0.9
    same = torch.zeros(1, 10, dtype=torch.bool)
    same[0, 0] = True
    gm = GroupMatchingLoss(hard_negatives=1, temperature=0.05)
    gen = torch.Generator().manual_seed(0)
    assert all(bool(gm.sample_negatives(sim, same, gen)[0, 1]) for _ in range(20))


def test_gm_value_with_all_negatives_in_group() -> None:
    anchors = F.normalize(torch.tensor([[1.0, 0.0]]), dim=1)
    cands = F.normalize(torch.tensor([[1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    same = torch.tensor([[True, False, False]])
    got = GroupMatchingLoss(hard_negatives=5, temperature=0.5)(anchors, cands, same)
    logits = (anchors @ cands.t()) / 0.5
    expected = -F.log_softmax(logits, dim=1)[0, 0]
    assert math.isclose(float(got), float(expected), rel_tol=1e-5)


def test_gm_forced_negatives_always_in_group() -> None:
    anchors = _emb(2)
    cands = _emb(6, seed=4)
    same = torch.zeros(2, 6, dtype=torch.bool)
    same[:, 0] = True
    forced = torch.zeros(2, 6, dtype=torch.bool)
    forced[:, 5] = True
    forced[0, 0] = True  # a CL beats a "same" mark
    gm = GroupMatchingLoss(hard_negatives=1)
    loss = gm(anchors, cands, same, forced, generator=torch.Generator().manual_seed(0))
    _grad_ok(loss, anchors, cands)
    assert cands.grad is not None and cands.grad[5].abs().sum() > 0


def test_gm_degenerate_batches() -> None:
    x = _emb(4)
    all_same = torch.ones(4, 4, dtype=torch.bool)  # one class: no negative at all
    loss = GroupMatchingLoss()(x, x, all_same)
    assert loss.detach().item() == 0.0
    _grad_ok(loss, x)
    y = _emb(4, seed=1)
    no_pos = torch.zeros(4, 4, dtype=torch.bool)
    loss = GroupMatchingLoss()(y, y, no_pos)
    assert loss.detach().item() == 0.0
    _grad_ok(loss, y)


def test_gm_seeded_sampling_is_reproducible() -> None:
    x = _emb(8)
    same = torch.eye(8, dtype=torch.bool)
    gm = GroupMatchingLoss(hard_negatives=2, temperature=1.0)
    a = gm(x, x, same, generator=torch.Generator().manual_seed(7))
    b = gm(x, x, same, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_gm_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="hard_negatives"):
        GroupMatchingLoss(hard_negatives=0)
    with pytest.raises(ValueError, match="same"):
        GroupMatchingLoss()(_emb(2), _emb(3), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="width"):
        GroupMatchingLoss()(_emb(2), _emb(2, d=4), torch.ones(2, 2, dtype=torch.bool))


# ---- image-text (seed 004 across modalities) ----------------------------------------------------------


def test_image_text_loss_value_on_a_hand_made_case() -> None:
    from trainer.losses import ImageTextContrastiveLoss

    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = ImageTextContrastiveLoss(temperature=1.0, alpha=0.0)
    value = loss(images, captions, torch.tensor([0, 1]))
    expected = -math.log(math.e / (math.e + 1.0))  # own caption at cosine 1, the other at 0
    assert float(value) == pytest.approx(expected, rel=1e-5)
    # the wrong caption as "own" costs more
    assert float(loss(images, captions, torch.tensor([1, 0]))) == pytest.approx(float(value) + 1.0, rel=1e-5)


def test_image_text_weak_positives_are_down_weighted_by_uncertainty() -> None:
    from trainer.losses import ImageTextContrastiveLoss

    images = torch.tensor([[1.0, 0.0]])
    captions = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]]), dim=1)
    loss = ImageTextContrastiveLoss(temperature=1.0, alpha=0.0)
    alone = float(loss(images, captions, torch.tensor([0])))
    weak = torch.tensor([[False, True, False]])
    with_weak = float(loss(images, captions, torch.tensor([0]), weak))
    # a weak positive farther than the own caption adds a (down-weighted) term with higher loss
    assert with_weak > alone
    regularised = ImageTextContrastiveLoss(temperature=1.0, alpha=1.0)
    reg = float(regularised(images, captions, torch.tensor([0]), weak))
    assert reg == pytest.approx(with_weak + 1.0, rel=1e-5)  # u = s_own - s_weak = 1 - 0


def test_image_text_loss_backpropagates_and_rejects_bad_input() -> None:
    from trainer.losses import ImageTextContrastiveLoss

    images, captions = _emb(5), _emb(3, seed=1)
    loss = ImageTextContrastiveLoss()
    _grad_ok(loss(images, captions, torch.tensor([0, 1, 2, 0, 1])), images, captions)
    with pytest.raises(ValueError, match="own"):
        loss(_emb(2), _emb(3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="width"):
        loss(_emb(2), _emb(3, d=4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="weak"):
        loss(_emb(2), _emb(3), torch.tensor([0, 1]), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="temperature"):
        ImageTextContrastiveLoss(temperature=0.0)
