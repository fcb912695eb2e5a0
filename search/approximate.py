"""Approximate search for large indexes: a FAISS first stage proposes videos, exact scoring ranks them.

A video's score is the max over its N clips of the cosine with the query. The first stage does not
index every clip: it indexes S = ceil(N / segment_clips) segment vectors per video, each the
normalised mean of `segment_clips` neighbouring clips, in an IVF index (an HNSW graph over the list
centroids, so that assigning millions of vectors is fast) with 4-bit fast-scan PQ codes (d/8 bytes a
vector; fewer when the memory budget says so). A query scans `nprobe` lists and fetches the
`candidates` best segments; their videos are re-scored exactly from the stored clip embeddings, read
from the memory-mapped index file (only the candidates' rows are read, so the collection may be
larger than RAM), and the top-k of those exact scores is the answer: scores are AMDNet's own, only a
true top video that the first stage missed can be lost.

The choices, measured with `benchmarks/search_scale.py` (synthetic videos x 32 clips, d = 384,
recall@10 against exact over 200 queries unless said; a 2-core VM shared with other jobs, so
latencies are high by 2-4x).

What a video is in the first stage (100k videos, `--sweep`, then with 8-bit SQ codes):

    one video is ...                vectors  build    recall@10 at nprobe 16 / 32 / 64   p50 (nprobe 32, 256 cand.)
    its mean (segment_clips 32)     100k     0.3 min  0.975 / 0.979 / 0.990             17 ms
    4 segments (segment_clips 8)    400k     1.2 min  0.997 / 0.997 / 0.998             25 ms
    8 segments (segment_clips 4)    800k     2.4 min  0.998 / 1.000 / 1.000             35 ms

A video's mean washes out the one clip a query describes; 4 segments keep it at half the vectors of
8 (build time and memory halve for 0.003 of recall). Every clip (32 vectors a video) would be 32M
vectors at 1M videos, 8x the 4M that the 1M build adds in about 7 minutes: beyond the 30-minute
budget on 2 cores. More candidates (512, 1024 instead of 256) did not raise recall at 100k.

How much of it a query reads (1M videos, IVF2048: lists grow as the square root of the vectors, so
a query's lists are a smaller share). With 8-bit SQ codes, recall@10 at nprobe 16 / 32 / 64 / 128 /
256 / 384 was 0.634 / 0.681 / 0.745 / 0.833 / 0.923 / 0.960 (64-256: 60 queries), p50 83 ms at 384:
the scan of 384 B codes was most of it. With 4-bit fast-scan PQ (48 B codes, build 7.3 min) and 512
candidates (coarser codes need a wider net): nprobe 384 / 512 / 768 gave 0.936 / 0.953 / 0.968 at
p50 33 / 33 / 36 ms (384 with 256 candidates: 0.911). The defaults are 768 lists, 512 candidates.

Re-scoring asks the kernel for all candidates' clips at once (`prefetch`): read one after the other
from a collection larger than the page cache, 150 candidates took 220 ms at 1M; prefetched, 13 ms.

A collection that grows (`update_approximate`): a FAISS id is a video's for as long as it is in the
collection (``<name>.ids.npy`` maps rows to ids), so an index of the grown collection removes the
vectors of videos gone (`remove_ids`) and adds those of new ones (`add_with_ids`, new ids) to the
superseded index's first stage, keeping its coarse quantiser and PQ codebooks. Measured with
`benchmarks/search_scale.py --growth` (added videos of topics the base lacks: new footage, the hard
case; one FAISS thread; the 2-core VM at load 5-15), recall@10 against exact on the grown collection,
for queries from base videos / from added ones:

    base     added   lists probed  rebuilt: time   recall         updated: time  recall
    100,000  1%      768 of 512    64.8 s          1.000 / 0.997  1.3 s          0.998 / 0.999
    100,000  1%      192 of 512    97.5 s          0.998 / 0.997  1.4 s          0.998 / 0.935
    100,000  15%     192 of 512    159.5 s         0.998 / 0.997  23.5 s         0.997 / 0.934
    20,000   10%     96 of 256     28.0 s          1.000 / 0.998  1.4 s          0.999 / 0.934
    20,000   25%     96 of 256     52.0 s          0.999 / 1.000  5.8 s          0.999 / 0.938
    20,000   50%     96 of 256     50.5 s          0.999 / 1.000  8.5 s          0.999 / 0.932
    20,000   100%    96 of 512*    126 s           0.999 / 1.000  23.2 s         0.999 / 0.922
    20,000   200%    96 of 512*    28.4 s          1.000 / 0.997  9.2 s          0.999 / 0.912

(* the rebuilt one has 512 lists, the updated one keeps 256; the rebuild times swing with the load.)
Base videos keep their recall however much is added. Queries about added videos keep theirs while
a query probes every list (the defaults up to about 150k videos), so the PQ codes trained on the base
encode new content well enough; when it probes a share of the lists (37.5% here, as at 1M videos),
they lose about 0.07 at once, hardly more as the collection grows: the quantiser has no lists near
the new topics. A query is about an added video with about the added share of probability, so the
loss of recall over all queries is about 0.07 x added / (base + added): RETRAIN_GROWTH = 0.15 keeps it
under 0.01 (0.15 / 1.15 x 0.07 = 0.009), after which the first stage is built anew on the grown
collection; the index's manifest says which (``approximate.quantiser``: "trained" or "kept", with
``trained_in``, ``trained_videos`` and the videos added and removed since).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

APPROXIMATE_FILE = "approximate.faiss"
_TRAINING_POINTS_PER_LIST = 40  # k-means sample per list: FAISS warns below 39
_KMEANS_ITERATIONS = 10  # not FAISS's 25: the centroids only route queries, and k-means is most of a build
_MIN_PQ_VECTORS = 1024  # fewer cannot train 16-centroid PQ codebooks: such a first stage keeps float32 vectors
_CHUNK = 4096  # videos read at a time when building or streaming: about 100 MB of float16 clips
# A first stage takes added videos into the lists its coarse quantiser made until the videos added
# since it was trained exceed this share of those it was trained on; then it is built anew. Measured
# with `benchmarks/search_scale.py --growth` (see "A collection that grows" above).
RETRAIN_GROWTH = 0.15


class ApproximateIndexError(ValueError):
    """The approximate index cannot be built or read; the message is one line and names the file."""


@dataclass(frozen=True)
class ApproximateSettings:
    """The ``search.approximate`` config section."""

    segment_clips: int  # neighbouring clips averaged into one first-stage vector
    nprobe: int  # IVF lists scanned per query
    candidates: int  # first-stage hits (segments) fetched per query; their videos are re-scored exactly
    memory_gb: float  # budget for the first-stage codes: d/8-byte PQ codes, shorter ones when those do not fit

    @classmethod
    def from_config(cls, section: dict) -> "ApproximateSettings":
        return cls(**section)


# The models whose score is a max of cosines over clip rows, which a first stage of pooled clip
# segments can propose candidates for (AMDNet's `clip_features`); every other model is searched exactly.
APPROXIMATE_MODELS = ("amdnet",)


def choose_method(method: str, n_videos: int, exact_max_videos: int, model: str) -> str:
    """``search.method`` resolved for a collection and a model: auto is exact up to exact_max_videos
    videos, and always for a model approximate search cannot serve (ValueError if it is asked for)."""
    if model not in APPROXIMATE_MODELS:
        if method == "approximate":
            raise ValueError(f"search.method=approximate: only {', '.join(APPROXIMATE_MODELS)} can be searched "
                             f"approximately, not model {model!r}; use search.method=exact (or auto)")
        return "exact"
    if method == "auto":
        return "exact" if n_videos <= exact_max_videos else "approximate"
    return method


def segment_vectors(clips: np.ndarray, segment_clips: int) -> np.ndarray:
    """(B, N, d) clip embeddings -> (B * S, d) float32 unit segment means, S = ceil(N / segment_clips)."""
    clips = torch.from_numpy(np.array(clips)).float()  # (B, N, d), a writable copy; torch converts float16 faster
    n_clips = clips.shape[1]
    segment_of_clip = torch.arange(n_clips) // segment_clips  # (N,)
    membership = (segment_of_clip[None] == torch.arange(math.ceil(n_clips / segment_clips))[:, None]).float()  # (S, N)
    segments = F.normalize(membership @ clips, dim=-1)  # (B, S, d)
    return segments.reshape(-1, clips.shape[2]).numpy()


def factory_string(n_vectors: int, dim: int, memory_gb: float) -> str:
    """The FAISS index for `n_vectors` (d,) vectors: IVF lists, HNSW-routed, with 4-bit fast-scan PQ
    codes of d/4 sub-vectors (d/8 bytes a vector), fewer sub-vectors when the memory budget says so."""
    lists = 2 ** round(math.log2(max(1.0, math.sqrt(n_vectors))))  # k-means cost grows as lists squared
    lists = max(1, min(lists, n_vectors // _TRAINING_POINTS_PER_LIST))
    if n_vectors < _MIN_PQ_VECTORS:
        return f"IVF{lists}_HNSW32,Flat"
    budget = memory_gb * 2**30
    fitting = [parts for parts in (dim // 4, dim // 8, dim // 16)
               if parts >= 2 and dim % parts == 0 and parts % 2 == 0 and n_vectors * parts / 2 <= budget]
    if not fitting:
        raise ApproximateIndexError(f"search.approximate.memory_gb={memory_gb}: {n_vectors:,} vectors do not "
                                    f"fit as {dim // 32}-byte codes; raise it or search.approximate.segment_clips")
    return f"IVF{lists}_HNSW32,PQ{fitting[0]}x4fs"


def ids_path(path: Path) -> Path:
    """Beside a first stage ``<name>.faiss``: ``<name>.ids.npy``, (V,) int64, the FAISS id of each row."""
    return path.with_name(f"{path.stem}.ids.npy")


def needs_retraining(report: dict, added: int) -> bool:
    """Whether a first stage must be built anew rather than take ``added`` more videos: when the
    videos added since its coarse quantiser (and PQ codebooks) were trained would exceed
    RETRAIN_GROWTH of the videos it was trained on."""
    return report["added_since_training"] + added > RETRAIN_GROWTH * report["trained_videos"]


def build_approximate(clip_embeddings, path: Path, settings: ApproximateSettings, seed: int = 0) -> dict:
    """Writes the first-stage index of a (V, N, d) array (an HDF5 dataset or memory map) to `path`,
    its ids (here each row's own number) to ``ids_path(path)``; returns its report."""
    import faiss

    n_videos, n_clips, dim = clip_embeddings.shape
    per_video = math.ceil(n_clips / settings.segment_clips)
    description = factory_string(n_videos * per_video, dim, settings.memory_gb)
    index = faiss.index_factory(dim, description, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = _KMEANS_ITERATIONS
    sample_videos = min(n_videos, math.ceil(_TRAINING_POINTS_PER_LIST * ivf.nlist / per_video))
    rows = np.sort(np.random.default_rng(seed).choice(n_videos, size=sample_videos, replace=False))
    index.train(segment_vectors(clip_embeddings[rows], settings.segment_clips))
    ids = np.arange(n_videos, dtype=np.int64)
    _add_videos(index, clip_embeddings, np.arange(n_videos), ids, settings.segment_clips)
    _write(index, ids, path)
    return {"factory": description, "vectors": int(index.ntotal), "bytes": path.stat().st_size,
            "quantiser": "trained", "trained_videos": n_videos, "added_since_training": 0,
            "removed_since_training": 0, "next_id": n_videos}


def update_approximate(previous: Path, report: dict, reused: np.ndarray, clip_embeddings, path: Path,
                       settings: ApproximateSettings) -> dict:
    """The first stage at ``previous`` (its ``report``) made that of a collection whose row r is the
    previous row ``reused[r]`` (or, -1, a video added): the vectors of videos no longer there are
    removed, those of added videos added with new ids; its quantiser is kept. Written to ``path``."""
    import faiss

    index, previous_ids = _read(previous)  # previous_ids (V_old,)
    kept = reused >= 0
    gone = np.setdiff1d(np.arange(len(previous_ids)), reused[kept])
    if len(gone):
        index.remove_ids(faiss.IDSelectorBatch(previous_ids[gone]))
    added = np.flatnonzero(~kept)
    ids = np.empty(len(reused), dtype=np.int64)  # (V,) a kept video keeps its id: its vectors stay as they are
    ids[kept] = previous_ids[reused[kept]]
    ids[added] = report["next_id"] + np.arange(len(added))
    _add_videos(index, clip_embeddings, added, ids[added], settings.segment_clips)
    _write(index, ids, path)
    return {**report, "vectors": int(index.ntotal), "bytes": path.stat().st_size, "quantiser": "kept",
            "added_since_training": report["added_since_training"] + len(added),
            "removed_since_training": report["removed_since_training"] + len(gone),
            "next_id": report["next_id"] + len(added), "added": len(added), "removed": len(gone)}


def _add_videos(index, clip_embeddings, rows: np.ndarray, ids: np.ndarray, segment_clips: int) -> None:
    """Adds the segment vectors of the videos at ``rows`` (increasing), each with its video's id."""
    per_video = math.ceil(clip_embeddings.shape[1] / segment_clips)
    for start in range(0, len(rows), _CHUNK):
        block = rows[start:start + _CHUNK]
        contiguous = len(block) and block[-1] - block[0] == len(block) - 1
        clips = clip_embeddings[block[0]:block[-1] + 1] if contiguous else clip_embeddings[block]
        index.add_with_ids(segment_vectors(clips, segment_clips), np.repeat(ids[start:start + len(block)], per_video))


def _write(index, ids: np.ndarray, path: Path) -> None:
    import faiss

    partial = path.with_name(path.name + ".partial")
    faiss.write_index(index, str(partial))
    np.save(ids_path(partial), ids)
    os.replace(ids_path(partial), ids_path(path))
    os.replace(partial, path)


def _read(path: Path):
    """The first stage at ``path`` and its ids (V,): each row's FAISS id."""
    import faiss

    for needed in (path, ids_path(path)):
        if not needed.is_file():
            raise ApproximateIndexError(f"{needed}: missing (the index's first stage); rebuild the index")
    try:
        return faiss.read_index(str(path)), np.load(ids_path(path))
    except (RuntimeError, ValueError) as error:
        raise ApproximateIndexError(f"{path}: not a readable FAISS index "
                                    f"({str(error).strip().splitlines()[-1]}); rebuild the index") from None


@contextmanager
def faiss_threads(count: int):
    """One query scans a few lists: too little work to split, and OpenMP threads that wait for each
    other on a busy 2-core machine cost more than they save (as for the text encoder)."""
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class ApproximateScorer:
    """Same interface as ExactScorer: (q, d) unit queries -> the top-k videos' exact scores and rows."""

    method = "approximate"

    def __init__(self, path: Path, clip_embeddings: np.ndarray, settings: ApproximateSettings):
        import faiss

        self.index, ids = _read(path)  # ids (V,): the FAISS id of each row
        self.id_order = np.argsort(ids)  # rows by id: a found id's row by binary search
        self.sorted_ids = ids[self.id_order]
        self.clips = clip_embeddings  # (V, N, d), memory-mapped: only candidates' rows are read
        self.clips_file = open(clip_embeddings.filename, "rb") if isinstance(clip_embeddings, np.memmap) else None
        self.n_videos, self.n_clips, dim = clip_embeddings.shape
        if self.index.d != dim or len(ids) != self.n_videos:
            raise ApproximateIndexError(f"{path}: vectors of {self.index.d} dimensions for {len(ids)} videos, the "
                                        f"index has {self.n_videos} videos of {dim}-dimensional clips; rebuild it")
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = settings.nprobe
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = max(2 * settings.nprobe, 64)  # >= nprobe lists found
        self.candidates = settings.candidates

    def candidate_rows(self, query: np.ndarray) -> np.ndarray:
        """(d,) query -> the sorted rows of the videos whose segments the first stage ranks highest."""
        with faiss_threads(1):
            _, ids = self.index.search(query[None], self.candidates)  # (1, candidates) video ids, -1 padded
        return np.unique(self.id_order[np.searchsorted(self.sorted_ids, ids[ids >= 0])])

    def prefetch(self, rows: np.ndarray) -> None:
        """Asks the kernel for every candidate's clips at once, so that the disk reads them in parallel
        (220 ms -> 13 ms for 150 candidates at 1M videos, see above)."""
        if self.clips_file is None:
            return  # an array in memory
        row_bytes = self.clips[0].nbytes
        for row in rows.tolist():
            os.posix_fadvise(self.clips_file.fileno(), self.clips.offset + row * row_bytes, row_bytes,
                             os.POSIX_FADV_WILLNEED)

    def top_k(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, d) unit queries -> scores (q, k') and video rows (q, k'), best first; k' = min(k, V)."""
        k = min(k, self.n_videos)
        scores = torch.full((len(queries), k), -torch.inf)
        rows = torch.zeros((len(queries), k), dtype=torch.long)
        for index, query in enumerate(queries):
            candidates = self.candidate_rows(query.numpy().astype(np.float32))
            self.prefetch(candidates)
            clips = torch.from_numpy(np.asarray(self.clips[candidates])).float()  # (C, N, d), read in row order
            per_video = (clips @ query).amax(dim=1)  # (C,)
            best = per_video.topk(min(k, len(candidates)))
            scores[index, :len(best.values)] = best.values
            rows[index, :len(best.values)] = torch.from_numpy(candidates)[best.indices]
        return scores, rows


@torch.no_grad()
def streamed_top_k(clip_embeddings, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of (q, d) queries over a (V, N, d) array read a chunk at a time (an HDF5 dataset or
    memory map larger than RAM): scores and video rows (q, k'), best first; the reference recall is
    measured against."""
    k = min(k, len(clip_embeddings))
    best_scores = torch.full((len(queries), k), -torch.inf)
    best_rows = torch.zeros((len(queries), k), dtype=torch.long)
    for start in range(0, len(clip_embeddings), _CHUNK):
        clips = torch.from_numpy(np.array(clip_embeddings[start:start + _CHUNK], dtype=np.float32))  # (B, N, d) copy
        per_video = (clips @ queries.T).amax(dim=1).T  # (q, B)
        rows = torch.arange(start, start + len(clips)).expand(len(queries), -1)  # (q, B)
        best_scores, order = torch.cat([best_scores, per_video], dim=1).topk(k, dim=1)
        best_rows = torch.cat([best_rows, rows], dim=1).gather(1, order)
    return best_scores, best_rows
