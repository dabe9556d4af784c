"""The PyTorch U-Net against the project's ONNX graph, and the training losses (analytic cases)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'morphometry-mri[train]')")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

from morphometry.errors import InputError
from morphometry.segment.networks import UNetSpec, unet_model
from morphometry.segment.training.losses import hard_dice, one_hot, soft_dice_loss, wl2_loss
from morphometry.segment.training.unet_torch import UNet, keras_weights

SPECS = {
    "s2-like": UNetSpec(in_channels=6, n_labels=7, features=3, levels=3),
    "paper-d": UNetSpec(in_channels=5, n_labels=5, features=4, levels=4, convs_per_level=1, multiplier=1,
                        skips_removed=2),
    "official-d": UNetSpec(in_channels=5, n_labels=5, features=2, levels=3, kernel=5, skips_removed=2),
}


def _trained_like(spec: UNetSpec) -> UNet:
    """A network whose batch-norm statistics and affine parameters are far from their defaults."""
    torch.manual_seed(0)
    model = UNet(spec, bn_momentum=0.5)
    with torch.no_grad():
        for bn in model.norms.values():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
        for _ in range(3):
            model(torch.randn(1, spec.in_channels, 16, 16, 16) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", list(SPECS))
def test_export_matches_pytorch(name):
    spec = SPECS[name]
    model = _trained_like(spec)
    x = np.random.default_rng(1).normal(size=(1, spec.in_channels, 16, 24, 16)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(x)), 1).numpy()
    session = ort.InferenceSession(unet_model(spec, keras_weights(model)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(["posteriors"], {"input": x})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("name", list(SPECS))
def test_parameter_count_and_layer_shapes(name):
    spec = SPECS[name]
    model = UNet(spec)
    trainable = sum(p.numel() for p in model.parameters())
    bn_stats = sum(2 * bn.num_features for bn in model.norms.values())
    assert trainable + bn_stats == spec.n_parameters()
    weights = keras_weights(model)
    assert {k: tuple(a.shape for a in v) for k, v in weights.items()} == spec.layer_shapes()


def test_skip_is_taken_before_batch_norm():
    """With a decoder reading only the skip, the output must not change with bn_down_0."""
    spec = UNetSpec(in_channels=1, n_labels=2, features=2, levels=2)
    model = UNet(spec).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        conv = model.convs["conv_uparm_2_0"].conv
        conv.weight[:, 2:] = 0  # ignore the upsampled channels (skip has 2 channels, first in the concat)
        before = model(x)
        model.norms["bn_down_0"].bias += 5.0
        after = model(x)
    torch.testing.assert_close(before, after)


def test_soft_dice_analytic():
    # uniform softmax (all logits equal) over 2 channels, 4 voxels, target [0, 0, 0, 1]
    logits = torch.zeros(1, 2, 1, 1, 4)
    target = torch.tensor([[[[0, 0, 0, 1]]]])
    # channel 0: 2*1.5 / (3 + 4*0.25) = 0.75; channel 1: 2*0.5 / (1 + 1) = 0.5
    assert float(soft_dice_loss(logits, target)) == pytest.approx(1 - (0.75 + 0.5) / 2, abs=1e-6)
    perfect = 100 * (2 * one_hot(target, 2) - 1)
    assert float(soft_dice_loss(perfect, target)) == pytest.approx(0, abs=1e-6)


def test_wl2_zero_at_target_and_ignores_background_voxels():
    target = torch.tensor([[[[0, 1, 2, 1]]]])
    logits = 5 * (2 * one_hot(target, 3) - 1)
    assert float(wl2_loss(logits, target)) == pytest.approx(0, abs=1e-6)
    wrong_background = logits.clone()
    wrong_background[0, :, 0, 0, 0] += 7.0  # voxel 0 is background: weight 1e-8
    assert float(wl2_loss(wrong_background, target)) < 1e-5
    wrong_fg = logits.clone()
    wrong_fg[0, 0, 0, 0, 1] += 3.0  # one squared error 9 among C * sum(w) = 3 * 3
    assert float(wl2_loss(wrong_fg, target)) == pytest.approx(9 / 9, rel=1e-5)


def test_hard_dice():
    pred = torch.tensor([[[0, 1, 1, 2]]])
    truth = torch.tensor([[[0, 1, 2, 2]]])
    dice = hard_dice(pred, truth, 4)
    np.testing.assert_allclose(dice[:3].numpy(), [1.0, 2 / 3, 2 / 3], rtol=1e-6)
    assert torch.isnan(dice[3])


def test_one_training_step_decreases_the_loss_on_a_fixed_batch():
    spec = UNetSpec(in_channels=1, n_labels=3, features=4, levels=3)
    torch.manual_seed(0)
    model = UNet(spec)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (1, 16, 16, 16), generator=g)
    x = target[:, None].float() / 2 + 0.05 * torch.randn(1, 1, 16, 16, 16, generator=g)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        loss = soft_dice_loss(model(x), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        final = float(soft_dice_loss(model(x), target))
    assert final < losses[0]


def test_d_variants_follow_the_paper_and_the_release():
    from morphometry.segment.training.runs import TrainConfig

    paper = TrainConfig(role="d", label_maps="x", width=16, levels=5, crop=32).spec()
    assert (paper.convs_per_level, paper.multiplier, paper.skips_removed, paper.kernel) == (1, 1, 2, 3)
    official = TrainConfig(role="d_all", label_maps="x", width=16, levels=5, crop=32, d_variant="official").spec()
    assert official == replace(UNetSpec(33, 33, features=16, kernel=5, skips_removed=2))


def test_d_skips_removed_sets_the_finest_scale_of_d():
    """One missing skip in a 4-level D: only the last decoder step (back to full resolution) lacks
    its skip, so that step's convolution sees the upsampled features alone."""
    from morphometry.segment.training.runs import TrainConfig
    from morphometry.segment.training.unet_torch import UNet

    spec = TrainConfig(role="d", label_maps="x", width=4, levels=4, crop=32, d_skips_removed=1).spec()
    assert [spec.keeps_skip(s) for s in range(3)] == [True, True, False]
    model = UNet(spec)
    assert model.convs["conv_uparm_5_0"].conv.in_channels == 8  # skip (4) + upsampled (4)
    assert model.convs["conv_uparm_6_0"].conv.in_channels == 4  # upsampled only
    assert model(torch.zeros(1, 5, 16, 16, 16)).shape == (1, 5, 16, 16, 16)
    with pytest.raises(InputError, match=r"d_skips_removed: must be at least 0 \(got -1\)"):
        TrainConfig(role="d", label_maps="x", levels=4, crop=32, d_skips_removed=-1)
