#!/usr/bin/env bash
# The GPU figures a user needs, in one run of under 8 minutes on one GPU, on a bare CUDA machine that
# has only this repository and its .venv: no downloads (random weights, generated videos and features).
#
#   benchmarks/gpu_check.sh               # on the GPU (cuda:0)
#   benchmarks/gpu_check.sh --cpu-smoke   # the same steps at a tiny size on the CPU (checks the script)
#
# It prints:
#   1. whether a fixed-shape padded batch spanning videos keeps each video's CLIP ViT-B/32 features
#      bit-identical to the video encoded alone on this device (what pipeline/features.py relies on);
#   2. extraction at 3 fps (CLIP ViT-B/32, decoding workers overlapping the model, extract_visual_features)
#      against the model alone on frames already decoded, in frames/s, and the ratio;
#   3. one TVR-shape training epoch and the TVR-shape evaluation (benchmarks/amdnet_speed.py);
#   4. search latency: exact scoring (one product over every clip, max per video, top-10), query by
#      query, on 100k videos x 32 clips, d = 384, on the GPU and on the CPU.
# SCRATCH (default /tmp/gpu_check) holds the generated videos and features; delete it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=.venv/bin/python
SCRATCH=${SCRATCH:-/tmp/gpu_check}
mkdir -p "$SCRATCH"

if [[ "${1:-}" == "--cpu-smoke" ]]; then
  DEVICE=cpu VIDEOS=2 SECONDS_EACH=3 BATCH=4 SCALE=0.005 SEARCH_VIDEOS=2000 SECTION_LIMIT=600
else
  DEVICE=cuda VIDEOS=12 SECONDS_EACH=40 BATCH=64 SCALE=1 SEARCH_VIDEOS=100000 SECTION_LIMIT=240
fi
export DEVICE VIDEOS SECONDS_EACH BATCH SEARCH_VIDEOS SCRATCH

echo "== machine: $(date -u +%FT%TZ), $(nproc) cores; uptime: $(uptime)"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
if [[ "$DEVICE" == cuda ]]; then
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --cpu-smoke')"
fi

echo "== 1-2. padded batches across videos; extraction at 3 fps vs the model alone ($DEVICE)"
timeout "$SECTION_LIMIT" $PY - <<'EOF'
import os, time
from pathlib import Path

import imageio_ffmpeg, numpy as np, subprocess, torch

from extractors import create_extractor
from extractors.decode import decode_frames, probe_video, sample_times
from pipeline.features import _Piece, _VideoBatcher, extract_visual_features
from pipeline.video_cache import VideoCache, video_identity

device, scratch = os.environ["DEVICE"], Path(os.environ["SCRATCH"])
n_videos, seconds = int(os.environ["VIDEOS"]), float(os.environ["SECONDS_EACH"])
FPS, SIZE, BATCH = 3.0, 224, int(os.environ["BATCH"])

# 2. Extraction: generated 360p videos (ffmpeg testsrc2, 25 fps), sampled at 3 fps. It runs first: its
# decoding workers are forked before this process has used any OpenMP threads (a fork after that can hang).
folder = scratch / "videos"
folder.mkdir(parents=True, exist_ok=True)
videos = []
for index in range(n_videos):
    path = folder / f"testsrc2_{index}_{seconds:g}s.mp4"
    if not path.exists():
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc2=size=640x360:rate=25:duration={seconds:g}", "-c:v", "libx264", "-preset",
                        "ultrafast", "-pix_fmt", "yuv420p", str(path)], check=True)
    videos.append({"video_id": path.stem, "path": str(path), "duration": probe_video(path).duration,
                   "identity": video_identity(path, folder, "file")})
def synchronize():
    if device == "cuda":
        torch.cuda.synchronize()
workers = min(len(os.sched_getaffinity(0)), 8)
visual = {"backbone": "clip", "model": "ViT-B-32", "pretrained": None, "seed": 0, "fps": FPS, "size": SIZE,
          "batch_size": BATCH, "num_workers": workers, "device": device, "max_failed_fraction": 0.0,
          "clip_len": 16, "clip_stride": None}
cache = VideoCache(scratch / f"cache-{time.time_ns()}", ".h5")
started = time.perf_counter()
report = extract_visual_features(videos, visual, cache, "gpu-check")
synchronize()
assert not report["failures"], report["failures"]
extraction_seconds = time.perf_counter() - started

# The model alone, on the same frames decoded beforehand.
frames = np.concatenate([decode_frames(v["path"], sample_times(v["duration"], FPS), short_side=SIZE).frames
                         for v in videos])
extraction = len(frames) / extraction_seconds
clip = create_extractor("clip", model="ViT-B-32", pretrained=None, device=device, batch_size=BATCH)
clip.encode(frames[:BATCH]); synchronize()  # warm
started = time.perf_counter()
for start in range(0, len(frames), BATCH):
    clip.encode(frames[start:start + BATCH])
synchronize()
model_alone = len(frames) / (time.perf_counter() - started)
# 1. Each video's rows from padded batches spanning videos, against the video alone (same batch shape).
rng = np.random.default_rng(0)
lengths = [5, BATCH + 6, 1, BATCH // 2 + 8]  # shorter and longer than a batch
clips = {f"v{i}": rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8) for i, n in enumerate(lengths)}
def through_batcher(ids):
    batcher = _VideoBatcher(clip, BATCH, pin_memory=device == "cuda")
    for video_id in ids:
        frames = clips[video_id]
        for start in range(0, len(frames), 16):
            piece = frames[start:start + 16]
            batcher.add(_Piece({"video_id": video_id}, piece, np.zeros(len(piece)), last=start + 16 >= len(frames)))
    batcher.flush()
    return {video["video_id"]: features for video, features, _ in batcher.finished()}
together = through_batcher(list(clips))
alone = {video_id: through_batcher([video_id])[video_id] for video_id in clips}
unequal = {v: float(np.abs(together[v] - alone[v]).max()) for v in clips if not np.array_equal(together[v], alone[v])}
print(f"padded batches spanning videos bit-identical to each video alone on {device}: {not unequal}"
      + (f" (max |diff| per video: {unequal})" if unequal else ""), flush=True)

print(f"extraction at 3 fps, {len(videos)} videos x {seconds:g} s 360p, {len(frames)} frames, {workers} decoding "
      f"workers: {extraction:,.1f} frames/s; model alone (ViT-B/32, batches of {BATCH}, frames decoded beforehand): "
      f"{model_alone:,.1f} frames/s; ratio {extraction / model_alone:.2f} (1.00 = decoding fully hidden; it "
      f"includes model loading and worker start-up)", flush=True)
EOF

echo "== 3. one TVR-shape epoch and the TVR-shape evaluation ($DEVICE, scale $SCALE)"
timeout "$SECTION_LIMIT" $PY benchmarks/amdnet_speed.py --device "$DEVICE" --scale "$SCALE" \
  --num-workers "$(( $(nproc) < 8 ? $(nproc) : 8 ))" --workdir "$SCRATCH/amdnet"

echo "== 4. search latency, exact scoring, $SEARCH_VIDEOS videos x 32 clips, d = 384"
timeout "$SECTION_LIMIT" $PY - <<'EOF'
import os, time

import numpy as np, torch

n_videos, clips, dim, k, n_queries = int(os.environ["SEARCH_VIDEOS"]), 32, 384, 10, 100
generator = torch.Generator().manual_seed(0)
flat = torch.nn.functional.normalize(torch.randn(n_videos * clips, dim, generator=generator), dim=1)  # (V*N, d)
queries = torch.nn.functional.normalize(torch.randn(n_queries, 1, dim, generator=generator), dim=-1)
devices = ["cuda", "cpu"] if os.environ["DEVICE"] == "cuda" else ["cpu"]
for device in devices:
    matrix, times = flat.to(device), []
    for query in queries:
        started = time.perf_counter()
        per_video = (query.to(device) @ matrix.T).view(1, n_videos, clips).amax(dim=-1)  # (1, V)
        per_video.topk(k, dim=1).indices.cpu()  # the answer back on the host
        times.append(time.perf_counter() - started)
    ms = 1000 * np.asarray(times[5:])  # after warm-up
    print(f"search on {device}: p50 {np.percentile(ms, 50):.2f} ms, p95 {np.percentile(ms, 95):.2f} ms per query",
          flush=True)
EOF
echo "== done: $(date -u +%FT%TZ); uptime: $(uptime)"
