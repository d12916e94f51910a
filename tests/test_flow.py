"""Flow extraction (`vidfeat extract --flow`): the methods recover known motion, the encoders give the known
descriptors of known flow, and flow stores are ordinary stores: same keys, labels and splits as the RGB store,
provenance that refuses mixing, resumable, predictable."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vidfeat.extract.flow import (
    FLOW_CLIP, TSN_FLOW_STD, HofMbh, OpenCVFlow, create_flow_backbone, cross_modality, flow_backbone_name,
)
from vidfeat.extract.options import ExtractOptions
from vidfeat.extract.runner import VideoJob, extract_videos
from vidfeat.features.errors import UserError
from vidfeat.features.store import open_store
from vidfeat.pipelines.cli import main
from vidfeat.pipelines.sample import encode_frames

SHIFT = (3, -2)  # px per frame: right and up


def texture(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random grey texture that dense flow can track everywhere."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 2.0)
    grey = ((noise - noise.min()) / (noise.max() - noise.min()) * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def moving_frames(seed: int, frames: int, shift: tuple[int, int], size: tuple[int, int] = (128, 160)) -> np.ndarray:
    """Frames of a texture translating by ``shift`` px per frame (x, y), cut from a larger canvas."""
    height, width = size
    margin = frames * max(map(abs, shift)) + 1
    canvas = texture(seed, height + 2 * margin, width + 2 * margin)
    return np.stack([canvas[margin - t * shift[1]: margin - t * shift[1] + height,
                            margin - t * shift[0]: margin - t * shift[0] + width] for t in range(frames)])


@pytest.fixture(scope="module")
def motion_videos(tmp_path_factory):
    """Two labelled videos: a texture moving right-up, and the same moving left-down (its frames reversed)."""
    root = tmp_path_factory.mktemp("motion")
    frames = moving_frames(0, 9, SHIFT)
    paths = {"right_up": root / "right_up.mp4", "left_down": root / "left_down.mp4"}
    encode_frames(frames, paths["right_up"], fps=8)
    encode_frames(frames[::-1], paths["left_down"], fps=8)
    return paths


def _jobs(videos: dict) -> list[VideoJob]:
    return [VideoJob(key, path, key, ("train",)) for key, path in videos.items()]


def _extract(videos: dict, out, name: str = flow_backbone_name(), weights: str | None = None, **options) -> None:
    summary = extract_videos(_jobs(videos), out, name, ExtractOptions(progress=False, workers=1, **options),
                             {"name": "motion"}, sorted(videos), 1, weights)
    assert not summary.failures, summary.failures


# --- methods ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["farneback", "dis", "tvl1"])
def test_opencv_methods_recover_a_known_shift(method):
    frames = moving_frames(1, 2, SHIFT)
    flow = OpenCVFlow(method)(torch.from_numpy(frames[None]))
    assert flow.shape == (1, 1, 2, 128, 160) and flow.dtype == torch.float32
    inner = flow[0, 0, :, 16:-16, 16:-16].reshape(2, -1)
    assert np.allclose(inner.median(dim=1).values.numpy(), SHIFT, atol=0.25)


def test_raft_pads_to_a_multiple_of_8_and_returns_the_frames_size():
    backbone = create_flow_backbone("flow/raft_small/hof_mbh", flow_weights="none")
    clips = torch.from_numpy(moving_frames(2, 3, SHIFT, size=(36, 50))[None])
    flow = backbone.extractor.method(clips)
    assert flow.shape == (1, 2, 2, 36, 50) and torch.isfinite(flow).all()
    assert backbone.describe_flow()["weights"] == "none"


# --- encoders -----------------------------------------------------------------------------------------------


def _uniform_flow(x: float, y: float, size=(32, 48)) -> torch.Tensor:
    flow = torch.zeros(1, 1, 2, *size)
    flow[:, :, 0], flow[:, :, 1] = x, y
    return flow


@pytest.mark.parametrize("vector, bin_", [((3.0, 0.0), 0), ((1.0, 1.0), 1), ((0.0, -2.0), 6), ((-4.0, 0.0), 4)])
def test_hof_of_uniform_motion_is_its_magnitude_in_its_orientation_bin(vector, bin_):
    encoder = HofMbh()
    features = encoder(_uniform_flow(*vector))[0].numpy()
    assert features.shape == (encoder.feature_dim,) == (400,)
    hof = features[:16 * 9].reshape(16, 9)
    expected = np.zeros((16, 9), np.float32)
    expected[:, bin_] = np.sqrt(np.hypot(*vector))
    np.testing.assert_allclose(hof, expected, atol=1e-3)  # the square root makes float32 rounding ~3e-4
    np.testing.assert_allclose(features[16 * 9:], 0, atol=1e-3)  # uniform motion has no motion boundaries


def test_hof_counts_static_pixels_and_mbh_sees_a_motion_boundary():
    flow = torch.zeros(1, 1, 2, 32, 32)
    flow[:, :, 0, :, 16:] = 2.0  # the right half moves right: a vertical motion boundary in x-flow
    features = HofMbh(cells=1)(flow)[0].numpy()
    hof, mbh_x, mbh_y = features[:9], features[9:17], features[17:]
    np.testing.assert_allclose(hof, np.sqrt([1.0, 0, 0, 0, 0, 0, 0, 0, 0.5]), atol=1e-6)  # half moving at 2 px
    assert mbh_x[0] > 0 and np.allclose(mbh_x[1:], 0) and np.allclose(mbh_y, 0)  # d(flow x)/dx > 0 only


def test_cross_modality_start_replicates_the_mean_rgb_kernel():
    conv = torch.nn.Conv2d(3, 4, 3)
    net = cross_modality(torch.nn.Sequential(conv, torch.nn.ReLU()), 10)
    first = net[0]
    assert first.in_channels == 10 and first.weight.shape == (4, 10, 3, 3)
    torch.testing.assert_close(first.weight, conv.weight.mean(dim=1, keepdim=True).expand(-1, 10, -1, -1))
    assert conv.weight.shape == (4, 3, 3, 3)  # the RGB network is left as it was


def test_stacked_flow_cnn_takes_2l_channels_tsn_scaled():
    backbone = create_flow_backbone("flow/farneback/resnet18", weights="none")
    encoder = backbone.extractor.encoder
    assert backbone.clip_len == 6 and backbone.default_stride == 5 and backbone.extractor.feature_dim == 512
    assert encoder.body[0].in_channels == 10
    flow = torch.full((2, 5, 2, 64, 64), 4 * FLOW_CLIP)  # clipped to +-20 px
    scaled = torch.full((2, 10, 64, 64), FLOW_CLIP / (2 * FLOW_CLIP * TSN_FLOW_STD))
    torch.testing.assert_close(encoder(flow), encoder.body(scaled).mean(dim=(2, 3)))
    with pytest.raises(UserError, match="--clip-len 6"):
        backbone.check_clip_len(4)


def test_i3d_flow_encoder_on_two_channels():
    backbone = create_flow_backbone("flow/farneback/i3d", weights="none")
    assert backbone.clip_len == 17 and backbone.frame_rate == 25.0
    out = backbone.extractor.encoder(torch.randn(1, 16, 2, 64, 64))
    assert out.shape == (1, 1024) and torch.isfinite(out).all()


# --- stores -------------------------------------------------------------------------------------------------


def test_flow_store_rows_are_consecutive_pairs_with_their_direction(motion_videos, tmp_path):
    out = tmp_path / "flow.h5"
    _extract(motion_videos, out)
    with open_store(out) as store:
        assert sorted(store.keys()) == ["left_down", "right_up"]
        assert store.label("right_up") == "right_up" and store.attrs["kind"] == "clip"
        flow = store.attrs["flow"]
        assert flow["method"] == "farneback" and flow["encoder"]["encoder"] == "hof_mbh"
        assert store.attrs["backbone"] == "flow/farneback/hof_mbh" and store.attrs["feature_dim"] == 400
        assert store.attrs["window"]["clip_len"] == 2 and store.attrs["window"]["stride"] == 1
        rows = {key: store.features(key).astype(np.float32) for key in store.keys()}
        np.testing.assert_array_equal(store.frame_ranges("right_up"), np.stack([np.arange(8), np.arange(1, 9)], 1))
        np.testing.assert_allclose(store.timestamps("right_up"), (np.arange(8) + 0.5) / 8)
    for key, rows_ in rows.items():
        assert rows_.shape == (8, 400)
        hof = rows_[:, :144].reshape(8, 16, 9).sum(axis=1)  # over the cells
        # right and up is -26.6 degrees (y grows downwards): bin 7 (315 deg) dominates; left and down: bin 3
        assert (hof[:, :8].argmax(axis=1) == (7 if key == "right_up" else 3)).all()


def test_flow_store_resumes_and_never_mixes_with_an_rgb_store(motion_videos, tmp_path):
    out = tmp_path / "flow.h5"
    _extract(motion_videos, out)
    summary = extract_videos(_jobs(motion_videos), out, flow_backbone_name(),
                             ExtractOptions(progress=False, workers=1), {"name": "motion"}, sorted(motion_videos), 1)
    assert summary.already_done == 2 and summary.extracted == 0
    with pytest.raises(UserError, match="flow"):
        _extract(motion_videos, out, flow_backbone_name("dis"))
    with pytest.raises(UserError, match="backbone"):
        _extract(motion_videos, out, "resnet18", "none", batch_size=2)


def test_cli_flow_options_and_their_errors(motion_videos, tmp_path):
    runner = CliRunner()
    video = str(motion_videos["right_up"])
    result = runner.invoke(main, ["extract", video, "--out", str(tmp_path / "f.h5"), "--flow", "dis",
                                  "--no-progress", "--workers", "1"])
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "f.h5") as store:
        assert store.attrs["backbone"] == "flow/dis/hof_mbh"
    cases = [
        (["--flow", "farneback", "--backbone", "resnet18"], "--backbone does not apply with --flow"),
        (["--flow-encoder", "resnet18"], "--flow-encoder applies with --flow"),
        (["--flow", "farneback", "--rois", "grid:2x2"], "--rois and --spatial do not apply to flow"),
        (["--flow", "farneback", "--weights", "IMAGENET1K_V1"], "hof_mbh has none"),
        (["--flow", "farneback", "--flow-weights", "none"], "--flow-weights applies to RAFT"),
        (["--flow", "farneback", "--compile"], "--compile does not apply to farneback"),
        (["--backbone", "flow/farneback/nope"], "unknown flow encoder 'nope'"),
    ]
    for args, message in cases:
        result = runner.invoke(main, ["extract", video, "--out", str(tmp_path / "e.h5"), "--no-progress", *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_predict_reextracts_flow_for_a_run_trained_on_a_flow_store(motion_videos, tmp_path):
    jobs = []
    for seed, split in ((3, "train"), (4, "test")):
        frames = moving_frames(seed, 5, SHIFT)
        for label, clip in (("right_up", frames), ("left_down", frames[::-1])):
            path = tmp_path / f"{label}{seed}.mp4"
            encode_frames(clip, path, fps=8)
            jobs.append(VideoJob(f"{label}{seed}", path, label, (split,)))
    out = tmp_path / "flow.h5"
    extract_videos(jobs, out, flow_backbone_name(), ExtractOptions(progress=False, workers=1), {"name": "motion"},
                   sorted(motion_videos), 1)
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(main, ["train-temporal", "--head", "mean", "--features", str(out), "--out", str(run),
                                  "--epochs", "2", "--val-fraction", "0", "--no-progress"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((run / "config.json").read_text())["features"]["provenance"]
    assert recorded["flow"]["method"] == "farneback"
    result = runner.invoke(main, ["predict", str(run), str(motion_videos["left_down"]), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert "left_down" in result.output and "right_up" in result.output


def test_i3d_flow_encoder_loads_a_two_channel_flow_checkpoint_and_starts_rgb_ones_cross_modally(tmp_path):
    from vidfeat.extract.i3d import piergiaj_key_map, random_i3d

    mapping = piergiaj_key_map()
    for channels, start in ((2, "flow checkpoint"), (3, "TSN cross-modality from RGB weights")):
        net = random_i3d(num_classes=400, padding="same", in_channels=channels)
        state = {mapping[k]: v.reshape(*v.shape, 1, 1, 1) if k == "fc.weight" else v
                 for k, v in net.state_dict().items()}
        path = tmp_path / f"i3d{channels}.pt"
        torch.save(state, path)
        backbone = create_flow_backbone("flow/farneback/i3d", weights=str(path))
        encoder = backbone.extractor.encoder
        assert encoder.net.conv1.conv.in_channels == 2 and backbone.describe_flow()["encoder"]["start"] == start
        assert backbone.weights_id.startswith("sha256:")


def test_predict_takes_raft_weights_for_the_flow_stream_only():
    from vidfeat.extract.provenance import reproducing_options

    sampling = {"mode": "all"}
    rgb = {"sampling": sampling, "dtype": "float16"}
    raft = {**rgb, "flow": {"method": "raft_small", "weights": "sha256:abc"}}
    assert reproducing_options(rgb, flow_weights="raft.pt").flow_weights is None
    assert reproducing_options(raft, flow_weights="raft.pt").flow_weights == "raft.pt"
    assert reproducing_options({**raft, "flow": {"weights": "none"}}).flow_weights == "none"
    assert reproducing_options({**raft, "flow": {"weights": None}}).flow_weights is None  # OpenCV: no weights
    with pytest.raises(UserError, match="--flow-weights FILE"):
        reproducing_options(raft)
