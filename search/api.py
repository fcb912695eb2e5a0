"""HTTP API and the search page (FastAPI, served by uvicorn).

    GET /                      the page (search/static/: plain HTML, CSS and JavaScript, no build step);
                               /?q=...&k=5 opens with that search done (a search can be linked)
    GET /api/search?q=...&k=5  {"query", "k", "exact", "method", "inputs", "results": [hit, ...]}; bad input: 422
                               (method: "exact" or "approximate", the scorer of the index; each hit says it too)
    GET /api/info              what the model reads, how many videos the index holds, how it is searched
    GET /videos/{video_id}     the video a browser plays (HTTP range requests, RFC 9110), looked up in the index
    GET /thumbnails/{video_id}?t=12.5   a JPEG of the frame at t seconds (past the end: the last frame),
                               made once and cached on disk

Files are found only through the index, by video id: no path is ever taken from a request.

Many clients at once: searches run in uvicorn's thread pool (anyio: at most 40 at a time; more wait
as open requests, none is dropped). The scoring and the spans run in those threads side by side
(torch releases the GIL); the text encoder, whose tokenizer is not thread-safe, runs in one thread,
`QueryBatcher`, which encodes the queries waiting at that moment together, one batch per query
shape, so each answer is bit for bit the one a lone search gives (Searcher.encode_queries). Memory
is bounded by what is in flight: at most 40 searches (anyio's thread limit), each holding its query
(at most MAX_QUERY_CHARS characters) and, while it is scored, one (videos x clips) float32 row
(AMDNet's; another model's score of one chunk of videos, searcher.ModelScorer); the encoder takes at most MAX_BATCH of them at a time and holds the activations of ENCODE_ROWS texts of
at most text.max_length tokens per model call.
"""
from __future__ import annotations

import os
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from extractors.decode import VideoDecodeError
from search.errors import SearchError
from search.searcher import MAX_K, Searcher

STATIC = Path(__file__).resolve().parent / "static"
_THUMBNAIL_SHORT_SIDE = 180
# Queries encoded in one model call at most: more would only grow the activations, not the speed.
MAX_BATCH = 32
# Ranges in one Range header at most; more are ignored (RFC 9110 lets a server serve the whole file).
MAX_RANGES = 100
_RANGE_SPEC = re.compile(r"(\d*)-(\d*)")


@dataclass
class _Pending:
    """One query waiting for its encoding."""

    text: str
    done: threading.Event = field(default_factory=threading.Event)
    vector: torch.Tensor | None = None  # (1, d)
    error: Exception | None = None


class QueryBatcher:
    """The one thread that checks and encodes queries: it takes every query waiting (up to MAX_BATCH)
    and encodes those of one shape (token count) in one call, which is as exact as encoding each
    alone and several times cheaper per query than one call each. At most `max_waiting` queries
    wait; a request beyond that blocks until there is room."""

    def __init__(self, searcher: Searcher, max_waiting: int = 64):
        self.searcher = searcher
        self.waiting: queue.Queue[_Pending] = queue.Queue(maxsize=max_waiting)
        threading.Thread(target=self._run, name="query-encoder", daemon=True).start()

    def encode(self, text: str) -> torch.Tensor:
        """(1, d): the query's embedding, as `searcher.encode_query(searcher.check_query(text))`;
        SearchError for a query the search cannot take."""
        pending = _Pending(text)
        self.waiting.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.vector

    def _run(self) -> None:
        while True:
            batch = [self.waiting.get()]
            while len(batch) < MAX_BATCH and not self.waiting.empty():
                batch.append(self.waiting.get_nowait())  # only this thread takes from the queue
            self._encode(batch)

    def _encode(self, batch: list[_Pending]) -> None:
        by_shape: dict[int, list[_Pending]] = {}
        for pending in batch:
            try:
                by_shape.setdefault(self.searcher.query_shape(pending.text), []).append(pending)
            except Exception as error:  # noqa: BLE001 (a SearchError or a bug: the request reports it, this thread lives on)
                pending.error = error
                pending.done.set()
        for group in by_shape.values():
            try:
                vectors = self.searcher.encode_queries([pending.text.strip() for pending in group])  # (B, d)
            except Exception as error:  # noqa: BLE001 (handed to each request, which reports it)
                for pending in group:
                    pending.error = error
                    pending.done.set()
                continue
            for row, pending in enumerate(group):
                pending.vector = vectors[row : row + 1]
                pending.done.set()


def byte_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ranges [first, last] (inclusive) of a Range header for a file of `size`
    bytes, read as RFC 9110 section 14 says: None when the header is to be ignored (another unit, a
    malformed one such as "bytes=abc" or "bytes=100-50", too many ranges), [] when it is valid but no
    range is satisfiable (416)."""
    unit, equals, specs = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    parts = [part.strip() for part in specs.split(",") if part.strip()]  # empty list elements are allowed
    if not parts or len(parts) > MAX_RANGES:
        return None
    ranges = []
    for part in parts:
        match = _RANGE_SPEC.fullmatch(part)
        if match is None or not (match[1] or match[2]):
            return None
        if match[1]:  # first-last or first-
            first = int(match[1])
            if match[2] and int(match[2]) < first:
                return None
            if first < size:
                ranges.append((first, min(int(match[2] or size - 1), size - 1)))
        elif int(match[2]) > 0 and size > 0:  # -suffix: the last bytes
            ranges.append((max(0, size - int(match[2])), size - 1))
    return ranges


class _FileInRanges(FileResponse):
    """A file served as the checked `ranges` say (None: whole), whatever the request's Range header
    held: Starlette then serves exactly those (one: 206; several: multipart/byteranges)."""

    def __init__(self, path: str, media_type: str, ranges: list[tuple[int, int]] | None):
        super().__init__(path, media_type=media_type)
        self.ranges = ranges

    async def __call__(self, scope, receive, send) -> None:
        headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
        if self.ranges is not None:
            spec = ",".join(f"{first}-{last}" for first, last in self.ranges)
            headers.append((b"range", f"bytes={spec}".encode()))
        await super().__call__({**scope, "headers": headers}, receive, send)


def create_app(searcher: Searcher, default_k: int = 10) -> FastAPI:
    app = FastAPI(title="Moment search")
    batcher = QueryBatcher(searcher)
    thumbnail_locks = [threading.Lock() for _ in range(64)]  # one writer per cached thumbnail; others in parallel
    thumbnails = searcher.index_dir / "thumbnails"

    def row_of(video_id: str) -> int:
        if video_id not in searcher.rows:
            raise HTTPException(404, f"no video {video_id!r} in the index")
        return searcher.rows[video_id]

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info():
        return {"inputs": searcher.inputs, "videos": len(searcher.video_ids), "span_rule": searcher.span_rule,
                "default_k": default_k, "max_k": MAX_K, "method": searcher.method}

    @app.get("/api/search")
    def search(q: str = Query(..., description="what happens in the moment"), k: int = default_k):
        try:
            searcher.check_k(k)
            hits = searcher.answer(batcher.encode(q), k)
        except SearchError as error:
            return JSONResponse({"detail": str(error)}, status_code=422)
        results = [{**hit.to_dict(), "frames": searcher.is_frames[hit.row],
                    "playable": bool(searcher.playable[hit.row])} for hit in hits]
        return {"query": q, "k": k, "exact": searcher.method == "exact", "method": searcher.method,
                "span_rule": searcher.span_rule, "inputs": searcher.inputs,
                "results": results}

    @app.get("/videos/{video_id:path}")
    def video(video_id: str, request: Request):
        playable = searcher.playable[row_of(video_id)]
        if not playable:
            raise HTTPException(404, f"video {video_id!r} has no playable file (a folder of frames): "
                                     f"see /thumbnails/{video_id}?t=...")
        media_type = "video/webm" if playable.endswith(".webm") else "video/mp4"
        header = request.headers.get("range")
        if header is None:
            return FileResponse(playable, media_type=media_type)
        size = os.stat(playable).st_size
        ranges = byte_ranges(header, size)
        if ranges == []:
            return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
        return _FileInRanges(playable, media_type, ranges)

    @app.get("/thumbnails/{video_id:path}")
    def thumbnail(video_id: str, t: float = Query(0.0, ge=0.0)):
        row = row_of(video_id)
        seconds = min(t, searcher.durations[row])  # the decoder shows the last frame from there on
        path = thumbnails / f"{row}_{round(seconds * 10)}.jpg"  # a tenth of a second apart at most
        with thumbnail_locks[hash(path.name) % len(thumbnail_locks)]:
            if not path.is_file():
                try:
                    _write_thumbnail(searcher.paths[row], seconds, path, searcher.attrs.get("frame_fps"))
                except VideoDecodeError as error:  # the source changed or vanished since indexing
                    raise HTTPException(404, f"video {video_id!r}: {error}") from None
        return FileResponse(path, media_type="image/jpeg")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _write_thumbnail(source: str, seconds: float, path: Path, frame_fps: float | None) -> None:
    """The frame on screen at `seconds`, as a JPEG with a short side of 180 pixels, written atomically."""
    from PIL import Image

    from amdnet.atomic import atomic_path
    from extractors.decode import decode_frames

    decoded = decode_frames(source, [seconds], short_side=_THUMBNAIL_SHORT_SIDE, crop=False, frames_fps=frame_fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        Image.fromarray(decoded.frames[0]).save(temporary, format="JPEG", quality=85)


def serve(searcher: Searcher, host: str, port: int, default_k: int = 10) -> None:
    import uvicorn

    print(f"search page: http://{host}:{port}/  ({len(searcher.video_ids)} videos)")
    uvicorn.run(create_app(searcher, default_k), host=host, port=port, log_level="warning")
