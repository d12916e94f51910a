"""The device stage: compiled graphs on CPU, and the overlapped CUDA path (skipped cleanly without CUDA)."""
import numpy as np
import pytest
import torch

from videogen import make_video
from vidfeat.extract.backbones import create_backbone
from vidfeat.extract.decode_pool import RowChunk
from vidfeat.extract.device import DeviceStage, Model, ModelSettings
from vidfeat.features.cpu import cpu_has_native_bf16
from vidfeat.extract.options import ExtractOptions
from vidfeat.extract.runner import VideoJob, extract_videos
from vidfeat.extract.video import Sampling, VideoReader
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



def test_cpu_stage_returns_each_batch_at_once_in_order():
    backbone = create_backbone("efficientnet_lite0", None)
    model = Model(backbone, torch.device("cpu"), ModelSettings("fp32"))
    stage = DeviceStage(model, None)
    batches = [_chunks([3, 1]), _chunks([2], seed=1)]
    first = stage.submit(batches[0], ["0", "1"])
    assert [o.chunks for o in first] == [batches[0]]
    np.testing.assert_array_equal(first[0].features, model(np.concatenate([c.pixels for c in batches[0]])))
    assert len(stage.submit(batches[1], ["0"])) == 1 and stage.flush() == []


def test_runner_features_equal_a_direct_single_process_pass(tmp_path):
    """The whole runner (decode pool, batching across videos, the frozen CPU graph, fp32 storage) gives what one
    process decoding each video and running the eager model on it gives: the same rows, timestamps, indices."""
    videos = [make_video(tmp_path / "a.avi", size=(48, 36), fps=5, seconds=2),
              make_video(tmp_path / "b.mp4", size=(40, 30), fps=7, seconds=1, codec="libx264")]
    out = tmp_path / "x.h5"
    options = ExtractOptions(device="cpu", batch_size=3, workers=2, progress=False, dtype="float32")
    jobs = [VideoJob(v.stem, v, "x") for v in videos]
    assert extract_videos(jobs, out, "efficientnet_lite0", options, {"name": "t"}, ["x"], 0).extracted == 2
    backbone = create_backbone("efficientnet_lite0", None)
    eager = Model(backbone, torch.device("cpu"), ModelSettings("fp32"))
    with open_store(out) as store:
        for video in videos:
            frames = list(VideoReader(video, Sampling(), backbone.preprocessing.geometry()))
            np.testing.assert_array_equal(store.timestamps(video.stem), [f.timestamp for f in frames])
            np.testing.assert_array_equal(store.frame_indices(video.stem), [f.index for f in frames])
            want = eager(np.stack([f.rgb for f in frames]))
            np.testing.assert_allclose(store.features(video.stem), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("graph", ["frozen", "frozen_mkldnn"])
def test_cpu_graphs_match_eager_features(graph):
    """Both frozen CPU graphs (resnets default to the oneDNN layout) on a full and a shorter last batch."""
    backbone = create_backbone("resnet18", "none")
    eager = Model(backbone, torch.device("cpu"), ModelSettings("fp32"))
    frozen = Model(backbone, torch.device("cpu"), ModelSettings("fp32", graph, (4, 224, 224, 3)))
    for rows in (4, 3):
        pixels = np.concatenate([c.pixels for c in _chunks([rows], seed=rows)])
        want = eager(pixels)
        np.testing.assert_allclose(frozen(pixels), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert create_backbone("resnet50", "none").cpu_graph == "frozen_mkldnn"
    assert create_backbone("efficientnet_lite0", None).cpu_graph == "frozen"


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bfloat16")
def test_cpu_bf16_is_opt_in_and_close_to_fp32(tmp_path):
    fp32 = _extract(tmp_path, "fp32", device="cpu")
    bf16 = _extract(tmp_path, "bf16", device="cpu", precision="bf16")
    np.testing.assert_array_equal(bf16["timestamps"], fp32["timestamps"])
    a, b = fp32["features"], bf16["features"]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99, cosine


def test_fp16_on_cpu_is_refused_with_the_alternatives(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device; use fp32"):
        _extract(tmp_path, "fp16", device="cpu", precision="fp16")
