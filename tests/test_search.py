"""Search (search/): the Index stage, the search function against Evaluate, the CLI, a plain folder
collection, the HTTP API on a real uvicorn server and the page in a real headless Chromium.

One tiny demo pipeline (Train + Evaluate + Index over the test split) is built per session and shared
(the `demo` and `searcher` fixtures of conftest.py; test_search_approximate.py uses them too).
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import luigi
import numpy as np
import pytest

import tasks
from search.cli import index_task, main as search_cli
from search.errors import SearchError
from search.searcher import MAX_K, MAX_QUERY_CHARS, Searcher
from storage import FeatureFile
from videos import make_testsrc_video, run_ffmpeg

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def _test_queries(evaluate) -> dict[str, str]:
    dataset_dir = evaluate.upstream_dir("dataset")
    return {q["cap_id"]: q["text"] for q in map(json.loads, (dataset_dir / "queries.jsonl").read_text().splitlines())
            if q["split"] == "test"}


@pytest.mark.parametrize("span_rule", ["anchor", "grown"])
def test_search_equals_evaluate(demo, searcher, span_rule):
    """Top-k ids, rank order, scores and spans of the search function are Evaluate's predictions."""
    path, index, evaluate = demo
    if span_rule != index.config["evaluate"]["span_rule"]:  # only Evaluate reruns; the index is the same
        evaluate = tasks.Evaluate(dataset=str(path), set=f"evaluate.span_rule={span_rule}")
        assert luigi.build([evaluate], local_scheduler=True, log_level="WARNING")
        searcher = Searcher(index.out_dir, span_rule=span_rule)
    texts = _test_queries(evaluate)
    predictions = [json.loads(line) for line in (evaluate.out_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) >= 8
    for record in predictions[:: max(1, len(predictions) // 8)]:
        top = record["top10"]
        hits = searcher.search(texts[record["cap_id"]], k=len(top))
        assert [hit.video_id for hit in hits] == [entry["video_id"] for entry in top], record["cap_id"]
        assert [hit.rank for hit in hits] == list(range(1, len(top) + 1))
        np.testing.assert_allclose([hit.score for hit in hits], [entry["score"] for entry in top], atol=1e-5)
        np.testing.assert_allclose([[hit.start, hit.end] for hit in hits], [entry["span"] for entry in top],
                                   atol=1e-4)


def test_index_holds_what_a_query_needs(demo, searcher):
    _, index, evaluate = demo
    with h5py.File(index.out_dir / "index.h5") as f:
        assert set(f["rows"]) == {"clip_features", "proposals", "centers", "widths"}  # AMDNet's represent_videos
        n_videos, n_clips, _ = f["rows/clip_features"].shape
        norms = np.linalg.norm(f["rows/clip_features"][()], axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        spans, durations = f["clip_spans"][()], f["durations"][()]
        assert f.attrs["use_subtitles"] and f.attrs["query_input"] == "pooled"
        source = json.loads(f.attrs["model_source"])
        assert source["name"] == "amdnet" and source["checkpoint"] == str(index.upstream_dir("train") / "best.pt")
        assert not any("/" in name for name in f)  # ids are data, not HDF5 paths
    metrics = json.loads((evaluate.out_dir / "metrics.json").read_text())
    assert n_videos == metrics["n_videos"] and n_clips == index.config["model"]["amdnet"]["map_size"]
    assert np.all(spans[:, 0, 0] == 0) and np.allclose(spans[:, -1, 1], durations, atol=1e-3)
    assert np.all(spans[:, :, 1] >= spans[:, :, 0])
    assert not (index.out_dir / "index.h5.partial").exists()


def test_what_reindexes(demo):
    path, index, _ = demo
    same = {"search.k=3 search.host=0.0.0.0 search.port=9000 search.device=cpu",
            "evaluate.span_rule=best_clip evaluate.chunk_size=7"}
    for overrides in same:
        assert tasks.Index(dataset=str(path), set=overrides).fingerprint == index.fingerprint, overrides
    for overrides in ("train.lr=0.001", "visual.parts.clip.seed=1", "search.split=null", "search.method=approximate",
                      "search.approximate.nprobe=64"):
        assert tasks.Index(dataset=str(path), set=overrides).fingerprint != index.fingerprint, overrides


def test_bad_queries_raise_a_clear_error(searcher):
    cases = {"": "empty", "   \n\t": "empty", "\u200b\u00a0": "empty", "x" * (MAX_QUERY_CHARS + 1): "characters"}
    # (a query over text.max_length tokens is cut as in training: tests/test_text_parity.py)
    for text, words in cases.items():
        with pytest.raises(SearchError, match=words):
            searcher.search(text, k=5)
    for k in (0, -1, MAX_K + 1):
        with pytest.raises(SearchError, match="k must be"):
            searcher.search("a red square", k=k)


def test_cli_table_json_and_errors(demo, searcher, capsys):
    path, _, _ = demo
    query = "a cartoon rabbit in a meadow"
    assert search_cli(["--dataset", str(path), query, "-k", "3", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = searcher.search(query, k=3)
    assert [line["video_id"] for line in lines] == [hit.video_id for hit in expected]
    assert search_cli(["--dataset", str(path), query, "-k", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["rank", "video", "score", "moment"] and len(table) == 4
    assert table[1].split()[1] == expected[0].video_id
    assert table[3] == f"exact search over {len(searcher.video_ids)} videos"
    assert search_cli(["--dataset", str(path), "   "]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: empty query") and len(error.strip().splitlines()) == 1


def test_index_and_search_a_plain_folder(demo, tmp_path, capsys):
    """A folder never seen in training, nested, with a container browsers do not play and a frame folder."""
    path, _, _ = demo
    folder = tmp_path / "footage"
    for name in ("street", "old"):
        (folder / name).mkdir(parents=True)
    make_testsrc_video(folder / "street" / "cars.mp4", seconds=4, fps=10)
    run_ffmpeg("-f", "lavfi", "-i", "testsrc=size=160x120:rate=10:duration=3", "-c:v", "libx264", "-preset",
               "ultrafast", "-pix_fmt", "yuv420p", str(folder / "old" / "tape.mkv"))
    frames = folder / "frames" / "walk"
    frames.mkdir(parents=True)
    for i in range(6):
        _write_jpeg(frames / f"{i:04d}.jpg", i)
    (folder / "notes.txt").write_text("not a video")
    outside = tmp_path / "outside.mp4"
    make_testsrc_video(outside, seconds=2, fps=10)
    (folder / "link.mp4").symlink_to(outside)  # resolves outside the collection: left out
    (folder / "street" / "broken.mp4").write_bytes(b"not a video" * 100)  # decord prints its own error line
    # As a user runs it (its own process): one line on stdout, one on stderr, the rest in the log file.
    result = subprocess.run([sys.executable, "-m", "search", "index", "--dataset", str(path), "--folder", str(folder)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (summary,), err = result.stdout.splitlines(), result.stderr
    assert len(err.splitlines()) == 1 and err.startswith("indexing into "), err
    index_dir = Path(re.search(r" videos in (\S+) ", summary)[1])
    assert summary.startswith("indexed 3 videos in ") and "(features: 3 extracted, 0 from the cache)" in summary
    assert "skipped 1: 1 unreadable_video" in summary and str(index_dir / "manifest.json") in summary, summary
    log = Path(re.search(r"\(log: (\S+)\)", err)[1])
    assert "Luigi Execution Summary" in log.read_text()  # the details went to the file the line names
    with h5py.File(index_dir / "index.h5") as f:
        ids = [value.decode() for value in f["video_ids"][()]]
        playable = [value.decode() for value in f["playable"][()]]
        assert f["is_frames"][()].tolist() == [True, False, False]
    assert ids == ["frames/walk", "old/tape.mkv", "street/cars.mp4"]
    assert playable[0] == "" and playable[1].endswith(".mp4") and "cache" in Path(playable[1]).parts  # made once per video
    assert playable[2] == str(folder / "street" / "cars.mp4")
    # The demo model reads subtitles: videos without any get an empty subtitle track, as in training.
    subtitles = index_task(str(path), folder=str(folder)).upstream()["subtitles"].features
    subtitle_file = FeatureFile(subtitles)
    mask, features = subtitle_file.group("mask"), subtitle_file.group("features")
    assert not any(np.any(rows) for _, rows in [*mask.items(), *features.items()])
    assert len(mask) == 3
    assert search_cli(["--dataset", str(path), "--folder", str(folder), "a test card", "-k", "5", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(hit["video_id"] for hit in hits) == sorted(ids)
    assert all(0 <= hit["start"] <= hit["end"] <= hit["duration"] + 1e-6 for hit in hits)
    assert search_cli(["index", "--dataset", str(path), "--folder", str(folder)]) == 0
    assert capsys.readouterr().out.startswith("index up to date: 3 videos in ")
    assert search_cli(["index", "--dataset", str(path), "--folder", str(tmp_path / "nothing")]) == 2


def _write_jpeg(path: Path, shade: int) -> None:
    from PIL import Image

    Image.fromarray(np.full((48, 64, 3), 40 * shade, dtype=np.uint8)).save(path)


# ---- the HTTP API on a real server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(searcher):
    with running_server(searcher, default_k=2) as address:
        yield address


@contextmanager
def running_server(searcher, default_k: int):
    """uvicorn serving the app on a free loopback port, in a thread; stopped at the end."""
    import uvicorn

    from search.api import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(create_app(searcher, default_k), host="127.0.0.1", port=port,
                                             log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


def _get(server: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A raw GET: the path goes to the server exactly as written (no client-side '..' folding)."""
    connection = http.client.HTTPConnection(server, timeout=30)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, {name.lower(): value for name, value in response.getheaders()}, body


def test_api_search_matches_the_search_function(server, searcher):
    status, _, body = _get(server, "/api/search?q=colour%20bars&k=4")
    assert status == 200
    answer = json.loads(body)
    expected = searcher.search("colour bars", k=4)
    assert [r["video_id"] for r in answer["results"]] == [hit.video_id for hit in expected]
    assert answer["exact"] is True and answer["method"] == "exact" and answer["inputs"]["subtitles"] is True
    assert {r["method"] for r in answer["results"]} == {"exact"}
    status, _, body = _get(server, "/api/search?q=colour%20bars")
    assert status == 200 and len(json.loads(body)["results"]) == 2  # the server's default k


@pytest.mark.parametrize("path, status", [
    ("/api/search?q=", 422),
    ("/api/search?q=%20%20", 422),
    ("/api/search", 422),
    (f"/api/search?q={'a' * (MAX_QUERY_CHARS + 1)}", 422),
    ("/api/search?q=cat&k=0", 422),
    (f"/api/search?q=cat&k={MAX_K + 1}", 422),
    ("/api/search?q=cat&k=ten", 422),
    ("/videos/no-such-video", 404),
    ("/thumbnails/no-such-video?t=1", 404),
    ("/videos/..%2F..%2F..%2Fetc%2Fpasswd", 404),
    ("/videos/../../../etc/passwd", 404),
    ("/static/../../../../etc/passwd", 404),
    ("/static/..%2F..%2Fapi.py", 404),
])
def test_api_bad_input(server, path, status):
    code, _, body = _get(server, path)
    assert code == status, body
    assert b"root:" not in body


def test_api_serves_videos_with_ranges_and_cached_thumbnails(server, searcher):
    video_id = searcher.video_ids[0]
    size = Path(searcher.playable[0]).stat().st_size
    status, headers, body = _get(server, f"/videos/{video_id}")
    assert status == 200 and len(body) == size and headers["accept-ranges"] == "bytes"
    status, headers, body = _get(server, f"/videos/{video_id}", {"Range": "bytes=100-199"})
    assert status == 206 and body == Path(searcher.playable[0]).read_bytes()[100:200]
    assert headers["content-range"] == f"bytes 100-199/{size}"
    status, headers, body = _get(server, f"/thumbnails/{video_id}?t=2.0")
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    cached = searcher.index_dir / "thumbnails" / "0_20.jpg"
    made = cached.stat().st_mtime_ns
    assert _get(server, f"/thumbnails/{video_id}?t=2.0")[2] == body and cached.stat().st_mtime_ns == made


@pytest.mark.parametrize("header", ["bytes=100-50", "bytes=abc", "bytes=", "bytes=-", "bytes=1-2-3", "bytes=5",
                                    "pages=0-10", "bytes=0-10,abc", "bytes=0-10,20-5"])
def test_api_ignores_an_invalid_range(server, searcher, header):
    """A Range header that is not valid (RFC 9110 section 14) is ignored: 200 with the whole file."""
    whole = Path(searcher.playable[0]).read_bytes()
    status, headers, body = _get(server, f"/videos/{searcher.video_ids[0]}", {"Range": header})
    assert status == 200 and body == whole and "content-range" not in headers


def test_api_serves_valid_ranges_and_refuses_unsatisfiable_ones(server, searcher):
    video_id, whole = searcher.video_ids[0], Path(searcher.playable[0]).read_bytes()
    size = len(whole)
    for header, expected in (("bytes=-100", whole[-100:]), (f"bytes={size - 10}-", whole[-10:]),
                             ("bytes=0-0", whole[:1]), (f"bytes=10-{10 * size}", whole[10:]),
                             (f"bytes=0-9, {size + 5}-", whole[:10])):  # an unsatisfiable part is dropped
        status, headers, body = _get(server, f"/videos/{video_id}", {"Range": header})
        assert status == 206 and body == expected, header
    status, headers, body = _get(server, f"/videos/{video_id}", {"Range": "bytes=0-9,20-29"})
    assert status == 206 and headers["content-type"].startswith("multipart/byteranges")
    assert whole[:10] in body and whole[20:30] in body
    for header in (f"bytes={size}-", f"bytes={size + 100}-{size + 200}", "bytes=-0"):
        status, headers, _ = _get(server, f"/videos/{video_id}", {"Range": header})
        assert status == 416 and headers["content-range"] == f"bytes */{size}", header


def test_thumbnail_past_the_end_is_the_last_frame(server, searcher):
    """t past the end (and far past it) shows the frame on screen at the end, not a blank frame."""
    from PIL import Image
    import io

    from extractors.decode import decode_frames

    lasts = [decode_frames(path, [1e9], short_side=180, crop=False) for path in searcher.paths]
    row = int(np.argmax([decoded.frames[0].mean() for decoded in lasts]))  # a video that does not end black
    last, duration = lasts[row], searcher.durations[row]
    assert last.timestamps[0] > duration - 1.0 and last.frames[0].mean() > 20
    for t in (duration + 0.5, 1e6):
        status, headers, body = _get(server, f"/thumbnails/{searcher.video_ids[row]}?t={t}")
        assert status == 200 and headers["content-type"] == "image/jpeg"
        shown = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.float32)
        assert shown.shape == last.frames[0].shape
        assert np.abs(shown - last.frames[0]).mean() < 4  # the same frame, up to JPEG


# ---- many clients at once -----------------------------------------------------------------------------


QUERIES = ["a man talks on the phone in a car", "colour bars", "a red square moving left", "a cartoon rabbit",
           "two people walk along a street at night while it rains", "a dog", "colour bars", "a bird flies"]


def _same_hits(answer: list[dict], expected) -> bool:
    """Exactly equal: ids, ranks, scores and spans (floats compared as they are, not to a tolerance)."""
    return [(r["video_id"], r["rank"], r["score"], r["start"], r["end"]) for r in answer] == \
        [(h.video_id, h.rank, h.score, h.start, h.end) for h in expected]


def test_concurrent_clients_get_the_sequential_answers(server, searcher):
    """48 requests from 16 clients at once: all answered, each exactly as a lone search answers it."""
    from urllib.parse import quote

    expected = {query: searcher.search(query, k=5) for query in set(QUERIES)}
    answers: list[tuple[str, int, dict]] = []

    def client(offset: int) -> None:
        for i in range(3):
            query = QUERIES[(offset + i) % len(QUERIES)]
            status, _, body = _get(server, f"/api/search?q={quote(query)}&k=5")
            answers.append((query, status, json.loads(body)))

    threads = [threading.Thread(target=client, args=(offset,)) for offset in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 48 and all(status == 200 for _, status, _ in answers)
    for query, _, body in answers:
        assert _same_hits(body["results"], expected[query]), query


class _HeldEncoder:
    """The real searcher, whose first encoding waits until released: the queries that arrive
    meanwhile must be encoded together. Records the size of each encoding call."""

    def __init__(self, searcher):
        self.searcher, self.release, self.calls = searcher, threading.Event(), []

    def __getattr__(self, name):
        return getattr(self.searcher, name)

    def encode_queries(self, texts):
        if not self.calls:
            self.release.wait(timeout=60)
        self.calls.append(len(texts))
        return self.searcher.encode_queries(texts)


def test_waiting_queries_are_encoded_together_and_exactly(searcher):
    from search.api import QueryBatcher

    held = _HeldEncoder(searcher)
    batcher = QueryBatcher(held)
    results: dict[int, object] = {}
    texts = ["the first query"] + QUERIES + ["", "x" * (MAX_QUERY_CHARS + 1)]

    def ask(i: int) -> None:
        try:
            results[i] = batcher.encode(texts[i])
        except SearchError as error:
            results[i] = error

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    threads[0].start()
    while not batcher.waiting.empty():  # the encoder thread took the first query and waits
        time.sleep(0.01)
    for thread in threads[1:]:
        thread.start()
    while batcher.waiting.qsize() < len(texts) - 1:
        time.sleep(0.01)
    held.release.set()
    for thread in threads:
        thread.join(timeout=60)
    assert held.calls[0] == 1 and len(held.calls) < len(QUERIES) + 1 and max(held.calls) > 1
    assert isinstance(results[len(texts) - 2], SearchError) and isinstance(results[len(texts) - 1], SearchError)
    for i, text in enumerate(texts[:-2]):
        assert torch_equal(results[i], searcher.encode_query(text)), text


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


# ---- the page in a real browser ---------------------------------------------------------------------


def _chromium() -> str:
    found = next((path for path in CHROMIUM_PATHS if os.access(path, os.X_OK)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {', '.join(CHROMIUM_PATHS)} in CI: .ci/run installs Debian's chromium")
        pytest.skip(f"no Chromium found at {', '.join(CHROMIUM_PATHS)}: `apt-get install chromium` to run this test")
    return found


def drive_search_page(executable: str, base_url: str, query: str, k: int, screenshot: Path) -> dict:
    """Types `query` into the page, waits for the results, clicks the best one whose moment does not
    start at 0 s (so a seek that did not happen cannot pass) and saves a screenshot. Also makes
    docs/search-page.png against `make serve`:
    cd tests && python -c 'from test_search import *; drive_search_page("/usr/bin/chromium",
    "http://127.0.0.1:8000", "a man talks on the phone in a car", 5, Path("../docs/search-page.png"))'
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 720})
            page.goto(f"{base_url}/")
            page.wait_for_function("document.getElementById('about').textContent.includes('videos indexed')")
            page.fill("#query", query)
            page.fill("#k", str(k))
            page.click("button[type=submit]")
            page.wait_for_selector("#results li.result")
            items = page.query_selector_all("#results li.result")
            starts = [float(item.get_attribute("data-start")) for item in items]
            chosen = next((index for index, start in enumerate(starts) if start > 0.5), 0)
            items[chosen].click()
            page.wait_for_selector("#player[data-seeked]")
            player = page.evaluate("(({currentTime, duration, error, readyState}) => "
                                   "({currentTime, duration, error, readyState}))(document.getElementById('player'))")
            page.wait_for_function("[...document.images].every(image => image.complete && image.naturalWidth > 0)")
            page.screenshot(path=str(screenshot))
            return {"ids": [item.get_attribute("data-video-id") for item in items], "chosen": chosen,
                    "player": player, "about": page.text_content("#about"), "status": page.text_content("#status")}
        finally:
            browser.close()


def test_page_in_a_real_browser(server, searcher, tmp_path):
    executable = _chromium()
    query = "a man talks on the phone in a car"
    expected = searcher.search(query, k=5)
    page = drive_search_page(executable, f"http://{server}", query, 5, tmp_path / "search-page.png")
    assert page["ids"] == [hit.video_id for hit in expected]
    assert "subtitles" in page["about"] and "(amdnet)" in page["about"] and "exact search" in page["status"]
    chosen, player = expected[page["chosen"]], page["player"]
    assert player["error"] is None and player["readyState"] >= 1
    assert abs(player["duration"] - chosen.duration) < 0.5  # the video really loaded
    assert abs(player["currentTime"] - chosen.start) <= 1 / 25  # within a frame (the demo: 25 fps or less)
    assert (tmp_path / "search-page.png").stat().st_size > 10_000


def test_page_reads_and_writes_the_search_in_the_url(server, searcher):
    """/?q=...&k=... opens with that search done; a search puts itself in the URL; back redoes the
    previous one, forward the next."""
    from urllib.parse import parse_qs, urlparse

    from playwright.sync_api import sync_playwright

    executable = _chromium()
    first, second = ("colour bars", 2), ("a man talks on the phone in a car", 3)
    expected = {query: [hit.video_id for hit in searcher.search(query, k=k)] for query, k in (first, second)}

    def shown(page) -> list[str]:
        return [item.get_attribute("data-video-id") for item in page.query_selector_all("#results li.result")]

    def wait_for(page, query: str, k: int) -> None:  # the index may hold fewer than k videos
        page.wait_for_function("([q, n]) => document.getElementById('query').value === q && "
                               "document.querySelectorAll('#results li.result').length === n",
                               arg=[query, len(expected[query])])

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"http://{server}/?q={first[0].replace(' ', '+')}&k={first[1]}")  # a linked search
            wait_for(page, *first)
            assert shown(page) == expected[first[0]] and page.input_value("#k") == "2"
            page.fill("#query", second[0])
            page.fill("#k", str(second[1]))
            page.click("button[type=submit]")
            wait_for(page, *second)
            assert shown(page) == expected[second[0]]
            assert parse_qs(urlparse(page.url).query) == {"q": [second[0]], "k": ["3"]}
            page.go_back()
            wait_for(page, *first)
            assert shown(page) == expected[first[0]] and parse_qs(urlparse(page.url).query)["q"] == [first[0]]
            page.go_forward()
            wait_for(page, *second)
            assert shown(page) == expected[second[0]]
        finally:
            browser.close()


@pytest.mark.parametrize("damage", ["truncated", "zero-length", "garbage"])
def test_a_damaged_index_is_one_line_naming_the_file_and_the_fix(demo, searcher, tmp_path, damage):
    """An index.h5 damaged after it was published: the search says which file and what to run."""
    copy = tmp_path / "index"
    shutil.copytree(searcher.index_dir, copy, ignore=shutil.ignore_patterns(".readers", ".lock"))
    path = copy / "index.h5"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "zero-length": b"",
                      "garbage": b"\x00garbage" * 1000}[damage])
    with pytest.raises(SearchError) as error:
        Searcher(copy, span_rule="grown")
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "python -m search index" in message
