"""The plasticity rule stays bounded over a paper-length run on realistic drives.

Drives come from a flex SNN (VGG5, smoke width) on real CIFAR-10 batches in
training mode; the rule is then iterated for as many updates as the paper
profile makes (120 epochs x 390 steps), cycling through those drives. The old
rule (raw mean rectified outputs, no decay) is run on the same activity as a
check that this test can fail.
"""
import pytest
import torch

from core import equations
from core.config import make_config
from training import data as cifar
from training.flex import drives_from_moments, pathway_moments
from training.models import build_model

PAPER_UPDATES = 120 * (50_000 // 128)


@pytest.fixture(scope="module")
def drives(cifar_dir):
    """Per flex layer: (new r_sel, new r_inv, old r_sel, old r_inv), each [batches, C]."""
    torch.manual_seed(0)
    cfg = make_config("smoke", mode="stbp", flex=True)
    model = build_model(cfg.model).train()
    split = cifar.subset(cifar.load_split("train", cifar_dir), 512, 0)
    out: dict[str, list[list[torch.Tensor]]] = {}
    with torch.no_grad():
        for x, _ in cifar.batches(split, 64):
            for paths in model.run(x).paths:  # the per-step conv and pool paths of every flex layer
                r_sel, r_inv = drives_from_moments(pathway_moments(paths.conv, paths.pool))
                old = paths.conv.relu().mean((0, 1, 3, 4)), paths.pool.relu().mean((0, 1, 3, 4))  # raw means
                out.setdefault(paths.name, [[], [], [], []])
                for lst, val in zip(out[paths.name], (r_sel, r_inv, *old)):
                    lst.append(val)
    return cfg.model, {k: [torch.stack(v) for v in vals] for k, vals in out.items()}


def _iterate(r_sel, r_inv, rate, decay, n):
    b = torch.zeros(r_sel.shape[1], dtype=torch.float64)
    peak = torch.zeros_like(b)
    for i in range(n):
        k = i % len(r_sel)
        b = b + equations.plasticity_delta(r_sel[k].double(), r_inv[k].double(), rate, decay, b)
        peak = torch.maximum(peak, b.abs())
    return b, peak


def test_bias_stays_bounded_and_mask_unsaturated_over_a_paper_run(drives):
    model_cfg, per_layer = drives
    rate, decay = model_cfg.plasticity_rate, model_cfg.plasticity_decay
    bound = equations.plasticity_bound(rate, decay)
    assert bound == pytest.approx(1.0)
    for name, (r_sel, r_inv, _, _) in per_layer.items():
        assert ((r_sel >= 0) & (r_sel <= 1) & (r_inv >= 0) & (r_inv <= 1)).all(), name
        b, peak = _iterate(r_sel, r_inv, rate, decay, PAPER_UPDATES)
        assert peak.max() <= bound + 1e-12, name
        # the fixed point lambda <r_sel - r_inv> / delta is reached, not exceeded
        fixed = rate * (r_sel - r_inv).double().mean(0) / decay
        torch.testing.assert_close(b, fixed, atol=0.02 * bound, rtol=0)
        # a hard-sigmoid mask with logits ~ N(0, 1) + b is saturated (0 or 1) for |z| > 3: with |b| <= 1 at
        # most P(|N(0,1)| > 2) ~ 5 % of units are, against ~0.3 % at b = 0
        z = torch.randn(20_000, dtype=torch.float64)[:, None] + b[None, :]
        saturated = ((z.abs() >= 3).double().mean(0))
        assert saturated.max() < 0.05, (name, saturated.max())


def test_the_old_rule_would_have_saturated_the_mask(drives):
    """The check bites: with raw drives and no decay, b runs past the saturation point |z| = 3."""
    model_cfg, per_layer = drives
    grew = []
    for name, (_, _, old_sel, old_inv) in per_layer.items():
        b, _ = _iterate(old_sel, old_inv, model_cfg.plasticity_rate, 0.0, PAPER_UPDATES)
        grew.append(b.abs().max().item())
    assert max(grew) > 3.0, grew
