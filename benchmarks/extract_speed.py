"""Throughput of visual feature extraction against the physical limit of decoding on this machine.

On a set of generated H.264 videos (ffmpeg's testsrc2 at 360p and 720p) it measures
  (a) raw decoding with the ffmpeg binary, `ffmpeg -i f -f null -` (decode only, the limit), and for
      comparison ffmpeg decoding every frame to 224 x 224 RGB as our decoding does,
  (b) our decode-and-sample as extraction runs it (`decode_videos`: decoding worker processes, frames
      resized to 224 and cropped), at the native frame rate (every frame) and at 3 fps,
  (c) end-to-end extraction (`extract_visual_features`) with CLIP ViT-B/32 at 3 fps and I3D on every frame,
  (d) the same CLIP extraction as the pipeline's VisualPart stage of a folder collection, through Luigi
      under a real luigid: 1 worker process, then 2 worker processes (2 shards), from an empty cache,
and prints frames/s, peak memory and the ratios (b)/(a), (c)/(b) and (d) 2 workers / 1 worker. Rates
are in source frames per second (video seconds x native fps per wall second), so sampling sparsely
can beat (a).

    python benchmarks/extract_speed.py                            # 6 x 20 s videos (3 at 360p, 3 at 720p)
    python benchmarks/extract_speed.py --videos 2 --seconds 5     # quick smoke run
    python benchmarks/extract_speed.py --skip-extraction          # decoding only
    python benchmarks/extract_speed.py --scaling-only             # (d) only
"""
from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tests/luigid.py: a real luigid and workers, as the tests start them

from extractors.decode import probe_video  # noqa: E402
from luigid import luigid_server, start_worker  # noqa: E402
from pipeline.config import SCHEMA  # noqa: E402
from pipeline.features import decode_videos, extract_visual_features  # noqa: E402
from pipeline.video_cache import ENTRY_SUFFIX, VideoCache, video_identity  # noqa: E402

HEIGHTS = (360, 720)  # alternating over the generated videos
NATIVE_FPS = 25.0
SAMPLING_FPS = 3.0
I3D_CLIP_LEN = 16  # I3D sees every frame, in windows of 16


def generate_videos(folder: Path, count: int, seconds: float) -> list[dict]:
    """`count` testsrc2 videos, alternately 360p and 720p; reused when already in `folder`."""
    videos = []
    for index in range(count):
        height = HEIGHTS[index % len(HEIGHTS)]
        path = folder / f"testsrc2_{height}p_{index}_{seconds:g}s.mp4"
        if not path.exists():
            subprocess.run(
                [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi",
                 "-i", f"testsrc2=size={height * 16 // 9}x{height}:rate={NATIVE_FPS:g}:duration={seconds}",
                 "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)],
                check=True)
        info = probe_video(path)
        videos.append({"video_id": path.stem, "path": str(path), "duration": info.duration,
                       "n_frames": info.n_frames, "split": "test"})
    return videos


def timed(function, *args, **kwargs) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - started


def ffmpeg_null_decode(videos: list[dict], output: tuple[str, ...] = ()) -> None:
    for video in videos:
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", video["path"],
                        *output, "-f", "null", "-"], check=True)


# For comparison only: ffmpeg itself producing what our decoding produces from every frame.
FFMPEG_RESIZED_RGB = ("-vf", "scale=-2:224:flags=bilinear,crop=224:224", "-c:v", "rawvideo", "-pix_fmt", "rgb24")


def decode_all(videos: list[dict], fps: float, args) -> None:
    """Decode, sample at `fps` and resize every video exactly as extraction does, without a model."""
    visual = {"fps": fps, "size": 224, "batch_size": args.batch_size, "num_workers": args.num_workers}
    sampled = sum(len(piece.frames) for piece in decode_videos(videos, visual) if piece.error is None)
    assert sampled >= sum(round(video["duration"] * fps) for video in videos), "decoding lost frames"


def extract_all(videos: list[dict], backbone: str, model: str | None, fps: float, args, cache_dir: Path) -> None:
    visual = {"backbone": backbone, "model": model, "pretrained": None, "seed": 0, "fps": fps,
              "size": 224, "clip_len": I3D_CLIP_LEN, "clip_stride": None, "batch_size": args.batch_size,
              "num_workers": args.num_workers, "device": args.device, "max_failed_fraction": 0.0}
    records = [{**video, "identity": video_identity(Path(video["path"]), cache_dir, "file")} for video in videos]
    cache = VideoCache(cache_dir, ENTRY_SUFFIX)
    report = extract_visual_features(records, visual, cache, "benchmark")
    assert len(report["decoded"]) == len(videos), "extraction lost videos"
    shutil.rmtree(cache_dir)


def extract_under_luigid(folder: Path, videos: list[dict], workers: int, args) -> float:
    """Seconds for `workers` Luigi worker processes under a real luigid to build the VisualPart stage
    (CLIP ViT-B/32 at 3 fps) of the videos as a folder collection, in a fresh work folder: start-up,
    dataset stage, shards and assembly included, as a user runs it."""
    run_dir = folder / f"luigid_{workers}_workers"
    shutil.rmtree(run_dir, ignore_errors=True)
    collection = run_dir / "videos"
    collection.mkdir(parents=True)
    for video in videos:
        shutil.copy2(video["path"], collection)  # a copy: a collection never reads through links leaving it
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config.update(name="extract_speed", workdir=str(run_dir / "work"))
    config["data"].update(source="folder", root=str(collection))
    config["visual"].update(fps=SAMPLING_FPS, size=224, num_workers=args.num_workers, batch_size=args.batch_size,
                            device=args.device, shards=workers, parts={"clip": {"backbone": "clip", "model": "ViT-B-32"}})
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    with luigid_server(run_dir) as server:
        started = time.perf_counter()
        processes = [start_worker(server, ["VisualPart", "--part", "clip", "--dataset", str(config_path)])
                     for _ in range(workers)]
        codes = [process.wait() for process in processes]
        seconds = time.perf_counter() - started
    assert codes == [0] * workers, f"a worker failed; logs in {run_dir / 'luigid'}"
    return seconds


def peak_memory_report() -> str:
    # ru_maxrss is KiB on Linux; decoding workers are children
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    report = f"peak RSS {own:.2f} GiB (largest child process {children:.2f} GiB)"
    if torch.cuda.is_available():
        report += f", CUDA max allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return report


def report(label: str, source_frames: int, seconds: float) -> float:
    rate = source_frames / seconds
    print(f"{label:<52} {seconds:7.2f} s  {rate:8.1f} source frames/s   {peak_memory_report()}", flush=True)
    return rate


def run(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="extract_speed_"))
    folder.mkdir(parents=True, exist_ok=True)
    videos = generate_videos(folder, args.videos, args.seconds)
    source_frames = sum(video["n_frames"] for video in videos)
    print(f"{len(videos)} videos ({', '.join(f'{h}p' for h in HEIGHTS)}), {args.seconds:g} s each, "
          f"{source_frames} frames at {NATIVE_FPS:g} fps, in {folder}; torch threads {torch.get_num_threads()}")

    if args.scaling_only:
        report_scaling(folder, videos, source_frames, args)
        return
    ffmpeg_rate = report("(a) ffmpeg -f null (decode only)", source_frames, timed(ffmpeg_null_decode, videos))
    resized_rate = report("    ffmpeg, every frame scaled to 224 RGB", source_frames,
                          timed(ffmpeg_null_decode, videos, FFMPEG_RESIZED_RGB))
    print(f"    its ratio to (a): {resized_rate / ffmpeg_rate:.2f} (what decoding every frame to RGB costs ffmpeg)")
    every_frame_rate = report(f"(b) decode_videos, every frame, {args.num_workers} workers", source_frames,
                              timed(decode_all, videos, NATIVE_FPS, args))
    sampled_rate = report(f"(b) decode_videos at {SAMPLING_FPS:g} fps, {args.num_workers} workers", source_frames,
                          timed(decode_all, videos, SAMPLING_FPS, args))
    print(f"(b)/(a) every frame: {every_frame_rate / ffmpeg_rate:.2f}   "
          f"at {SAMPLING_FPS:g} fps: {sampled_rate / ffmpeg_rate:.2f}   (CPU goal >= 0.9)")
    if args.skip_extraction:
        return

    seconds = timed(extract_all, videos, "clip", "ViT-B-32", SAMPLING_FPS, args, folder / "clip_cache")
    rate = report(f"(c) extraction clip:ViT-B-32 at {SAMPLING_FPS:g} fps", source_frames, seconds)
    print(f"    {source_frames * SAMPLING_FPS / NATIVE_FPS / seconds:.1f} sampled frames/s;  "
          f"(c)/(b) {rate / sampled_rate:.2f}   (GPU goal >= 0.8)")
    seconds = timed(extract_all, videos, "i3d", None, NATIVE_FPS, args, folder / "i3d_cache")
    rate = report(f"(c) extraction i3d, every frame, windows of {I3D_CLIP_LEN}", source_frames, seconds)
    print(f"    {source_frames / I3D_CLIP_LEN / seconds:.2f} windows/s;  (c)/(b every frame) "
          f"{rate / every_frame_rate:.2f}   (GPU goal >= 0.8)")
    report_scaling(folder, videos, source_frames, args)


def report_scaling(folder: Path, videos: list[dict], source_frames: int, args) -> None:
    one = report("(d) VisualPart clip:ViT-B-32 under luigid, 1 worker", source_frames,
                 extract_under_luigid(folder, videos, 1, args))
    two = report("(d) the same, 2 worker processes (2 shards)", source_frames,
                 extract_under_luigid(folder, videos, 2, args))
    print(f"    (d) 2 workers / 1 worker: {two / one:.2f}   (each worker: {args.num_workers} decoding workers, "
          f"{args.device} model; on one host they share its cores and GPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=6, help="number of generated videos")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each generated video")
    parser.add_argument("--workdir", help="keep the generated videos here and reuse them on reruns")
    parser.add_argument("--skip-extraction", action="store_true", help="measure (a) and (b) only")
    parser.add_argument("--scaling-only", action="store_true", help="measure (d) only: 2 workers under luigid vs 1")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=SCHEMA["visual"]["num_workers"].default,
                        help="decoding worker processes (default: the pipeline's, one per CPU core)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
