"""CIFAR model families: registration, forward/backward, parameter counts, memory-efficient DenseNet, channels_last,
torch.compile. Fast and seeded; the big configurations are only built on the meta device and counted."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from banets.models import create_model, list_models

# Exact parameter counts (10 classes, 100 classes); docs/models.md shows the same table.
PARAMS = {
    "densenet_bc": (769_162, 800_032),
    "densenet_bc_112_33": (6_892_786, 6_987_916),
    "densenet_bc_90_60": (15_054_010, 15_189_100),
    "densenet_bc_80_80": (20_949_290, 21_104_180),
    "densenet_bc_80_120": (47_045_530, 47_277_820),
    "wide_resnet": (36_479_194, 36_536_884),
    "wrn_28_1": (369_498, 375_348),
    "wrn_28_2": (1_467_610, 1_479_220),
    "wrn_28_5": (9_132_634, 9_161_524),
    "wrn_28_10": (36_479_194, 36_536_884),
    "preresnet": (1_703_258, 1_726_388),
    "preresnet_29": (312_218, 335_348),
    "preresnet_164": (1_703_258, 1_726_388),
    "preresnet_1001": (10_327_706, 10_350_836),
    "resnet_cifar": (269_722, 275_572),
    "resnet8": (75_290, 81_140),
    "resnet20": (269_722, 275_572),
    "resnet56": (853_018, 858_868),
    "resnet110": (1_727_962, 1_733_812),
}

# Reduced kwargs for the configurations too heavy to run on CPU in a test (over ~2M parameters).
SMALL = {
    "densenet_bc_112_33": dict(depth=10),
    "densenet_bc_90_60": dict(depth=10),
    "densenet_bc_80_80": dict(depth=10),
    "densenet_bc_80_120": dict(depth=10, growth_rate=24),
    "wide_resnet": dict(depth=10, widen_factor=2),
    "wrn_28_5": dict(depth=10),
    "wrn_28_10": dict(depth=10, widen_factor=3),
    "preresnet_1001": dict(depth=20),
}

# One small configuration per family for the structural tests.
FAMILIES = {
    "densenet_bc": dict(depth=16, growth_rate=6),
    "wide_resnet": dict(depth=10, widen_factor=2, dropout=0.0),
    "preresnet": dict(depth=11),
    "resnet_cifar": dict(depth=8, width=8),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_count(name: str, **kwargs) -> int:
    """Parameter count without allocating or initialising weights."""
    with torch.device("meta"):
        return count(create_model(name, **kwargs))


def test_registered_names():
    from banets.models.registry import _REGISTRY

    mine = {"banets.models." + m for m in ("densenet", "wide_resnet", "preresnet", "resnet_cifar")}
    registered = {n for n, f in _REGISTRY.items() if f.__module__ in mine}
    assert registered == set(PARAMS)
    assert set(PARAMS) <= set(list_models())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_forward_backward(name):
    model = create_model(name, num_classes=7, **SMALL.get(name, {}))
    model.train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    assert (meta_count(name), meta_count(name, num_classes=100)) == PARAMS[name]


def test_published_parameter_counts():
    # He et al. 2016a: ResNet-20 0.27M, ResNet-110 1.7M (option A shortcuts add no parameters).
    assert round(meta_count("resnet20") / 1e6, 2) == 0.27
    assert round(meta_count("resnet110") / 1e6, 1) == 1.7
    # Option B adds a 1x1 conv + BN at each of the two reshaping shortcuts.
    assert meta_count("resnet8", shortcut="B") - meta_count("resnet8") == (16 * 32 + 64) + (32 * 64 + 128)
    # Zagoruyko & Komodakis: WRN-28-10 has 36.5M parameters (36,479,194 in their code for 10 classes).
    assert meta_count("wrn_28_10") == 36_479_194
    # Born-again Table 1 lists the Wide-ResNets with their CIFAR-100 counts.
    for width, paper in ((1, 0.38), (2, 1.48), (5, 9.16)):
        assert round(meta_count(f"wrn_28_{width}", num_classes=100) / 1e6, 2) == paper
    # He et al. 2016b / born-again Table 5: Pre-ResNet-1001 10.2M for CIFAR-100: the weights of its convolutions and
    # classifier; its BatchNorm scales and shifts add 0.15M.
    with torch.device("meta"):
        model = create_model("preresnet_1001", num_classes=100)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert round((weights + model.classifier.bias.numel()) / 1e6, 1) == 10.2
    assert round(count(model) / 1e6, 2) == 10.35


def test_densenet_paper_counts():
    # Table 1's 6.3M for "DenseNet-112-33" is a 17-layers-per-block network (depth 106).
    assert round(meta_count("densenet_bc", depth=106, growth_rate=33) / 1e6, 1) == 6.3
    # Table 1's 16.1M / 22.4M / 50.4M match (within 0.5%) a final compressing transition after the last block.
    for (depth, growth), paper in (((90, 60), 16.1e6), ((80, 80), 22.4e6), ((80, 120), 50.4e6)):
        n = meta_count("densenet_bc", depth=depth, growth_rate=growth, final_transition=True)
        assert abs(n - paper) / paper < 0.005


def test_densenet_structure():
    with torch.device("meta"):
        model = create_model("densenet_bc_90_60")
    assert len(model.stages[0].block.layers) == 14  # (90 - 4) // 6
    assert model.conv1.out_channels == 120
    assert model.stage_channels() == [480, 660, 1500]
    assert model.classifier.in_features == 1500
    assert [stage.transition.out_channels for stage in model.stages[:2]] == [480, 660]
    with torch.device("meta"):
        final = create_model("densenet_bc_90_60", final_transition=True)
    assert final.stage_channels() == [480, 660, 750] and final.classifier.in_features == 750
    model = create_model("densenet_bc", block_layers=(1, 2, 3), growth_rate=4, compression=0.75)
    assert [len(s.block.layers) for s in model.stages] == [1, 2, 3]
    assert model.stage_channels() == [9, 12, 24]  # 8+4 -> 9, 9+8 -> 12, 12+12
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 24, 8, 8)
    plain = create_model("densenet_bc", depth=10, growth_rate=4, bottleneck=False, compression=1.0)
    assert plain.conv1.out_channels == 16 and plain.stage_channels() == [24, 32, 40]
    assert plain(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("family, kwargs", FAMILIES.items())
def test_stage_channels_and_spatial_size(family, kwargs):
    model = create_model(family, **kwargs)
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features.shape[1:] == (model.stage_channels()[-1], 8, 8)
    assert model.classifier.in_features == model.stage_channels()[-1]
    assert len(model.stages) == 3


def test_residual_stage_channels():
    with torch.device("meta"):
        assert create_model("wrn_28_10").stage_channels() == [160, 320, 640]
        assert create_model("preresnet_164").stage_channels() == [64, 128, 256]
        assert create_model("resnet8", width=32).stage_channels() == [32, 64, 128]


@pytest.mark.parametrize("train", [True, False])
def test_memory_efficient_densenet_is_identical(train):
    kwargs = dict(depth=22, growth_rate=6, drop_rate=0.2, num_classes=5)
    plain = create_model("densenet_bc", **kwargs)
    efficient = create_model("densenet_bc", memory_efficient=True, **kwargs)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for model in (plain, efficient):
        model.train(train)
        torch.manual_seed(1)  # the same dropout masks
        out = model(x)
        (out * torch.arange(5.0)).sum().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters()):
        assert p.grad is not None and torch.equal(p.grad, q.grad), name
    # BatchNorm running statistics are updated once, not again during recomputation.
    for (name, b), c in zip(plain.named_buffers(), efficient.buffers()):
        assert torch.equal(b, c), name
    if train:
        assert efficient.stages[0].block.layers[0].norm1.num_batches_tracked.item() == 1


def test_memory_efficient_checkpoints():
    model = create_model("densenet_bc", depth=10, growth_rate=4, memory_efficient=True)
    calls = []
    layer = model.stages[0].block.layers[0]
    layer.norm1.register_forward_hook(lambda *_: calls.append(1))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert len(calls) == 2  # forward, then recomputed in backward
    calls.clear()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(calls) == 1


@pytest.mark.parametrize("family, kwargs", FAMILIES.items())
def test_channels_last(family, kwargs):
    model = create_model(family, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "family, kwargs",
    [("densenet_bc", dict(depth=10, growth_rate=4, memory_efficient=True)), ("resnet_cifar", dict(depth=8, width=8))],
)
def test_compiles_without_graph_breaks(family, kwargs):
    eager = create_model(family, **kwargs)
    compiled_model = create_model(family, **kwargs)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    expected, out = eager(x), compiled(x)
    torch.testing.assert_close(out, expected)
    expected.sum().backward()
    out.sum().backward()
    torch.testing.assert_close(compiled_model.conv1.weight.grad, eager.conv1.weight.grad)
    for b, c in zip(eager.buffers(), compiled_model.buffers()):
        torch.testing.assert_close(c, b)


def test_wide_resnet_dropout_is_active_in_training():
    model = create_model("wide_resnet", depth=10, widen_factor=1, dropout=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "family, kwargs",
    [
        ("wide_resnet", dict(depth=27)),
        ("preresnet", dict(depth=29, bottleneck=False)),
        ("preresnet", dict(depth=100)),
        ("resnet_cifar", dict(depth=21)),
        ("resnet_cifar", dict(depth=20, shortcut="C")),
        ("densenet_bc", dict(depth=9)),
        ("densenet_bc", dict(compression=0.0)),
    ],
)
def test_invalid_configurations(family, kwargs):
    with pytest.raises(ValueError):
        create_model(family, **kwargs)
