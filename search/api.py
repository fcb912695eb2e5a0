"""HTTP API and the search page (FastAPI, served by uvicorn).

    GET /                      the page (search/static/: plain HTML, CSS and JavaScript, no build step)
    GET /api/search?q=...&k=5  {"query", "k", "exact", "method", "inputs", "results": [hit, ...]}; bad input: 422
                               (method: "exact" or "approximate", the scorer of the index; each hit says it too)
    GET /api/info              what the model reads, how many videos the index holds, how it is searched
    GET /videos/{video_id}     the video a browser plays (HTTP range requests), looked up in the index
    GET /thumbnails/{video_id}?t=12.5   a JPEG of the frame at t seconds, made once and cached on disk

Files are found only through the index, by video id: no path is ever taken from a request.
"""
from __future__ import annotations

import threading
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from extractors.decode import VideoDecodeError
from search.searcher import MAX_K, Searcher, SearchError

STATIC = Path(__file__).resolve().parent / "static"
_THUMBNAIL_SHORT_SIDE = 180


def create_app(searcher: Searcher, default_k: int = 10) -> FastAPI:
    app = FastAPI(title="AMDNet moment search")
    search_lock = threading.Lock()  # the text encoder's tokenizer is not thread-safe
    thumbnail_lock = threading.Lock()  # one writer per cached thumbnail
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
            with search_lock:
                hits = searcher.search(q, k)
        except SearchError as error:
            return JSONResponse({"detail": str(error)}, status_code=422)
        results = [{**hit.to_dict(), "frames": searcher.is_frames[hit.row],
                    "playable": bool(searcher.playable[hit.row])} for hit in hits]
        return {"query": q, "k": k, "exact": searcher.method == "exact", "method": searcher.method,
                "span_rule": searcher.span_rule, "inputs": searcher.inputs,
                "results": results}

    @app.get("/videos/{video_id:path}")
    def video(video_id: str):
        playable = searcher.playable[row_of(video_id)]
        if not playable:
            raise HTTPException(404, f"video {video_id!r} has no playable file (a folder of frames): "
                                     f"see /thumbnails/{video_id}?t=...")
        return FileResponse(playable, media_type="video/webm" if playable.endswith(".webm") else "video/mp4")

    @app.get("/thumbnails/{video_id:path}")
    def thumbnail(video_id: str, t: float = Query(0.0, ge=0.0)):
        row = row_of(video_id)
        seconds = min(t, searcher.durations[row])
        path = thumbnails / f"{row}_{round(seconds * 10)}.jpg"  # a tenth of a second apart at most
        with thumbnail_lock:
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
