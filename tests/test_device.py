"""The device stage: compiled graphs on CPU, and the overlapped CUDA path (skipped cleanly without CUDA)."""
import numpy as np
import pytest
import torch

from videogen import make_video
from vidfeat.extract.backbones import create_backbone
from vidfeat.extract.decode_pool import RowChunk
from vidfeat.extract.device import DeviceStage, Model, ModelSettings
from vidfeat.extract.runner import ExtractOptions, VideoJob, extract_videos
from vidfeat.features import open_store

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _chunks(sizes: list[int], seed: int = 0) -> list[RowChunk]:
    rng = np.random.default_rng(seed)
    chunks = []
    for video, n in enumerate(sizes):
        index = np.arange(n)
        chunks.append(RowChunk(video, (224, 224), rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8),
                               index / 10.0, index, np.stack([index, index], 1), np.zeros(n, np.int64)))
    return chunks


def _features(stage: DeviceStage, batches: list[list[RowChunk]]) -> list[np.ndarray]:
    outputs = []
    for chunks in batches:
        outputs += stage.submit(chunks, [str(c.video) for c in chunks])
    outputs += stage.flush()
    assert [o.chunks for o in outputs] == batches, "outputs come back in submission order, with their chunks"
    return [o.features for o in outputs]


def _extract(tmp_path, name: str, **options) -> dict:
    video = tmp_path / "v.avi"
    if not video.exists():
        make_video(video, size=(48, 36), fps=5, seconds=1)
    out = tmp_path / f"{name}.h5"
    opts = ExtractOptions(batch_size=4, workers=1, progress=False, dtype="float32", **options)
    summary = extract_videos([VideoJob("v", video, "x")], out, "efficientnet_lite0", opts, {"name": "t"}, ["x"], 0)
    assert summary.extracted == 1, summary.failures
    with open_store(out) as store:
        return {"features": store.features("v"), "timestamps": store.timestamps("v")}


def test_compiled_backbone_matches_eager_with_a_padded_tail(tmp_path):
    """5 frames at batch 4: the last batch of 1 is padded to 4, so the graph is compiled once."""
    eager = _extract(tmp_path, "eager", device="cpu", eager=True)
    compiled = _extract(tmp_path, "compiled", device="cpu", compile=True)
    assert eager["features"].shape == (5, 1280)
    np.testing.assert_array_equal(compiled["timestamps"], eager["timestamps"])
    np.testing.assert_allclose(compiled["features"], eager["features"], atol=1e-4, rtol=1e-4)


def test_compile_and_eager_exclude_each_other(tmp_path):
    with pytest.raises(ValueError, match="--eager and --compile exclude each other"):
        _extract(tmp_path, "both", device="cpu", eager=True, compile=True)


@cuda
def test_overlapped_cuda_batches_equal_synchronous_ones():
    backbone = create_backbone("efficientnet_lite0", None)
    model = Model(backbone, torch.device("cuda"), ModelSettings("fp32"))
    batches = [_chunks([3, 5]), _chunks([8], seed=1), _chunks([2, 1], seed=2), _chunks([4], seed=3)]
    overlapped = _features(DeviceStage(model, None), batches)
    synchronous = [model(np.concatenate([c.pixels for c in chunks])) for chunks in batches]
    for got, want in zip(overlapped, synchronous):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    on_cpu = Model(create_backbone("efficientnet_lite0", None), torch.device("cpu"), ModelSettings("fp32"))
    np.testing.assert_allclose(overlapped[1], on_cpu(batches[1][0].pixels), atol=1e-3, rtol=1e-3)


@cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_features_stay_close_to_fp32(precision):
    backbone = create_backbone("efficientnet_lite0", None)
    batches = [_chunks([16])]
    full = _features(DeviceStage(Model(backbone, torch.device("cuda"), ModelSettings("fp32")), None), batches)[0]
    reduced = _features(DeviceStage(Model(backbone, torch.device("cuda"), ModelSettings(precision)), None), batches)[0]
    cosine = (full * reduced).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(reduced, axis=1)
    assert cosine.min() > 0.99, cosine


@cuda
@pytest.mark.parametrize("compile_model", [False, True], ids=["eager", "compiled"])
def test_cuda_extraction_matches_cpu(tmp_path, compile_model):
    cpu = _extract(tmp_path, "cpu", device="cpu")
    gpu = _extract(tmp_path, "gpu", device="cuda", precision="fp16", compile=compile_model)
    np.testing.assert_array_equal(gpu["timestamps"], cpu["timestamps"])
    cosine = (cpu["features"] * gpu["features"]).sum(1) / (
        np.linalg.norm(cpu["features"], axis=1) * np.linalg.norm(gpu["features"], axis=1))
    assert cosine.min() > 0.99, cosine

