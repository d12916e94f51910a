"""torchvision video backbones: windows and preprocessing from the weights, features that reproduce torchvision."""
from __future__ import annotations

import hashlib
import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vidfeat.extract.backbones import create_backbone, list_backbones
from vidfeat.extract.video_models import ClipBackbone, create_clip_backbone, list_clip_backbones
from vidfeat.extract.weights import WeightsNotFound

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
# name: clip_len, frame_rate (torchvision's docs for each KINETICS400_V1), resize, crop, mean, feature dim
EXPECTED = {
    "r3d_18": (16, 15.0, 128, 112, KINETICS_MEAN, 512),
    "mc3_18": (16, 15.0, 128, 112, KINETICS_MEAN, 512),
    "r2plus1d_18": (16, 15.0, 128, 112, KINETICS_MEAN, 512),
    "s3d": (128, 15.0, 256, 224, KINETICS_MEAN, 1024),
    "mvit_v2_s": (16, 7.5, 256, 224, (0.45, 0.45, 0.45), 768),
    "swin3d_t": (32, 15.0, 256, 224, (0.485, 0.456, 0.406), 768),
}


def test_every_clip_backbone_is_reachable_through_create_backbone():
    assert list_clip_backbones() == ["i3d", *EXPECTED]
    names = list_backbones()
    assert "resnet50" in names and all(name in names for name in list_clip_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'r2plus1d_19'.*r2plus1d_18.*swin3d_t"):
        create_backbone("r2plus1d_19")
    with pytest.raises(ValueError, match="unknown clip backbone 'resnet50'; choose one of: i3d, r3d_18"):
        create_clip_backbone("resnet50")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_window_and_preprocessing_come_from_the_weights(name):
    clip_len, frame_rate, resize, crop, mean, dim = EXPECTED[name]
    weights = torchvision.models.get_model_weights(name).DEFAULT
    docs = weights.meta["_docs"]  # the sentence torchvision's docs print; TRAINED_WINDOWS must agree with it
    assert f"clip_len={clip_len}" in docs and re.search(rf"frame_rate={frame_rate:g}\b", docs)
    backbone = create_backbone(name, "none")
    assert isinstance(backbone, ClipBackbone) and backbone.kind == "clip"
    assert (backbone.clip_len, backbone.default_stride, backbone.frame_rate) == (clip_len, clip_len // 2, frame_rate)
    pre = backbone.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (resize, crop, "bilinear")
    assert pre.mean == pytest.approx(mean) and pre.std == pytest.approx(tuple(weights.transforms().std))
    assert backbone.feature_dim == backbone.extractor.feature_dim == dim
    described = backbone.describe()
    assert (described["kind"], described["clip_len"], described["frame_rate"]) == ("clip", clip_len, frame_rate)
    assert backbone.weights_id == "none" and backbone.categories is None
    backbone.check_clip_len(clip_len)
    assert backbone.stride_for(clip_len) == backbone.default_stride and backbone.stride_for(1) == 1


def _unit_scale(net: nn.Module, seed: int) -> nn.Module:
    """Seeded weights whose activations keep their scale (torchvision's s3d init shrinks them to ~1e-7)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5)
    return net.eval()


def _head_input(name: str, net: nn.Module) -> list[torch.Tensor]:
    """Capture what torchvision's own forward hands its classifier."""
    captured: list[torch.Tensor] = []
    head = {"s3d": lambda: net.classifier, "mvit_v2_s": lambda: net.head}.get(
        name, lambda: net.fc if hasattr(net, "fc") else net.head)()
    head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    return captured


@pytest.mark.parametrize(
    ("name", "clip_shape", "map_shape"),
    [
        ("r3d_18", (2, 8, 48, 64), (512, 1, 3, 4)),
        ("mc3_18", (2, 8, 48, 64), (512, 8, 3, 4)),
        ("r2plus1d_18", (2, 8, 48, 64), (512, 1, 3, 4)),
        ("swin3d_t", (1, 8, 64, 64), (768, 4, 2, 2)),
        ("s3d", (1, 24, 224, 224), (1024, 3, 7, 7)),  # needs >= 224 px and 14 frames for its (2, 7, 7) pool
        ("mvit_v2_s", (1, 16, 224, 224), (768, 8, 7, 7)),  # takes exactly its trained size
    ],
)
def test_features_are_what_torchvisions_classifier_reads(tmp_path, name, clip_shape, map_shape):
    torch.manual_seed(10)
    net = _unit_scale(torchvision.models.get_model(name, weights=None), seed=11)
    path = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), path)
    backbone = create_backbone(name, path)
    assert backbone.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()

    batch, frames, height, width = clip_shape
    clips = torch.randint(0, 256, (batch, frames, height, width, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(12))
    pre = backbone.preprocessing
    x = (clips.permute(0, 4, 1, 2, 3).contiguous().float() / 255 - torch.tensor(pre.mean).view(1, 3, 1, 1, 1)) / (
        torch.tensor(pre.std).view(1, 3, 1, 1, 1))
    captured = _head_input(name, net)
    with torch.inference_mode():
        features, fmap = backbone.extractor.features_and_map(clips)
        logits = backbone.extractor.classify(features)
        expected_logits = net(x)
    expected = captured[0].mean(dim=(2, 3, 4)) if name == "s3d" else captured[0]
    assert features.shape == (batch, backbone.feature_dim) and fmap.shape == (batch, *map_shape)
    assert features.std() > 1e-2  # the comparison is between non-trivial numbers
    scale = expected.abs().max()
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5 * expected_logits.abs().max())
    if name == "s3d":  # the mean of S3D's (2, 7, 7) stride-1 pool: inner time steps count twice
        torch.testing.assert_close(features, F.avg_pool3d(fmap, (2, 7, 7), stride=1).mean(dim=(2, 3, 4)))
        assert not torch.allclose(features, fmap.mean(dim=(2, 3, 4)), rtol=1e-3, atol=1e-3)
    elif name != "mvit_v2_s":  # mvit's feature is its class token, not a pool of the map
        torch.testing.assert_close(features, fmap.mean(dim=(2, 3, 4)))


def test_default_weights_come_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("VIDFEAT_OFFLINE", "1")
    cached = tmp_path / "hub" / "checkpoints" / "r2plus1d_18-91a641e6.pth"
    with pytest.raises(WeightsNotFound) as info:
        create_backbone("r2plus1d_18")
    message = str(info.value)
    assert f"weights for r2plus1d_18 are not in the torch cache at {cached}" in message
    assert "--weights FILE (a state_dict for r2plus1d_18) or --weights none" in message
    assert not (tmp_path / "hub").exists()

    cached.parent.mkdir(parents=True)
    torch.manual_seed(13)
    net = torchvision.models.video.r2plus1d_18()
    torch.save(net.state_dict(), cached)
    backbone = create_backbone("r2plus1d_18")
    assert backbone.weights_id == "R2Plus1D_18_Weights.KINETICS400_V1"
    assert len(backbone.categories) == 400 and backbone.categories[0] == "abseiling"
    assert torch.equal(backbone.extractor.classifier.weight, net.fc.weight)


def test_clip_sizes_and_inputs_are_checked():
    mvit = create_clip_backbone("mvit_v2_s", "none")
    with pytest.raises(ValueError, match=r"mvit_v2_s takes clips of exactly 16 frames of 224x224 .* got 32 frames "
                                         r"of 224x224; use its default --clip-len"):
        mvit.check_clip_len(32)
    s3d = create_clip_backbone("s3d", "none")
    with pytest.raises(ValueError, match="s3d needs clips of at least 14 frames of 224x224, got 8 frames"):
        s3d.check_clip_len(8)
    s3d.check_clip_len(14)
    r2plus1d = create_clip_backbone("r2plus1d_18", "none")
    r2plus1d.check_clip_len(1)
    with pytest.raises(ValueError, match="--clip-len must be >= 1"):
        r2plus1d.check_clip_len(0)
    with pytest.raises(ValueError, match=r"expected uint8 clips shaped \[B, T, H, W, 3\], got torch.float32"):
        r2plus1d.extractor(torch.zeros(1, 4, 32, 32, 3))
    with pytest.raises(ValueError, match=r"got torch.uint8 \(1, 3, 4, 32, 32\)"):
        r2plus1d.extractor(torch.zeros(1, 3, 4, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="s3d needs clips of at least 14 frames of 224x224, got 16 frames of 112x112"):
        s3d.extractor(torch.zeros(1, 16, 112, 112, 3, dtype=torch.uint8))
