// The search page: asks /api/search, lists the moments, plays the chosen one from its start.
// The search is in the URL (/?q=...&k=...): a search can be linked, and back/forward redo theirs.
"use strict";

const $ = (id) => document.getElementById(id);
const FRAMES_SHOWN = 4; // frame-folder sources: frames across the moment instead of a player
let defaultK = 10; // the server's, once /api/info has answered

function seconds(value) {
  return `${value.toFixed(1)} s`;
}

function videoUrl(hit) {
  return `/videos/${encodeURIComponent(hit.video_id)}`;
}

function thumbnailUrl(hit, time) {
  return `/thumbnails/${encodeURIComponent(hit.video_id)}?t=${time.toFixed(2)}`;
}

async function loadInfo() {
  const response = await fetch("/api/info");
  const info = await response.json();
  const inputs = info.inputs;
  const subtitles = inputs.subtitles
    ? "video frames and subtitles (videos without subtitles are indexed with an empty subtitle track)"
    : "video frames only (no subtitles)";
  $("about").textContent =
    `${info.videos} videos indexed. The model (${inputs.model}) reads ${subtitles}; visual features: ${inputs.visual}; ` +
    `queries: ${inputs.text} (${inputs.query_input}). Moments: ${info.span_rule} rule.`;
  defaultK = info.default_k;
  $("k").value = defaultK;
  $("k").max = info.max_k;
}

function resultItem(hit) {
  const item = document.createElement("li");
  item.className = "result";
  item.dataset.videoId = hit.video_id;
  item.dataset.start = hit.start;
  const thumb = document.createElement("img");
  thumb.src = thumbnailUrl(hit, hit.start);
  thumb.alt = `frame at ${seconds(hit.start)}`;
  thumb.loading = "lazy";
  const details = document.createElement("div");
  details.className = "details";
  const title = document.createElement("div");
  title.className = "title";
  title.textContent = `${hit.rank}. ${hit.video_id}`;
  const timeline = document.createElement("div");
  timeline.className = "timeline";
  timeline.title = `moment ${seconds(hit.start)} - ${seconds(hit.end)} of ${seconds(hit.duration)}`;
  const moment = document.createElement("div");
  moment.className = "moment";
  moment.style.left = `${(100 * hit.start) / hit.duration}%`;
  moment.style.width = `${(100 * (hit.end - hit.start)) / hit.duration}%`;
  timeline.appendChild(moment);
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `score ${hit.score.toFixed(4)} · moment ${seconds(hit.start)} - ${seconds(hit.end)}` +
    ` of ${seconds(hit.duration)}${hit.frames ? " · frames" : ""}`;
  details.append(title, timeline, meta);
  item.append(thumb, details);
  item.addEventListener("click", () => show(hit, item));
  return item;
}

function show(hit, item) {
  document.querySelectorAll(".result.selected").forEach((node) => node.classList.remove("selected"));
  item.classList.add("selected");
  $("viewer").hidden = false;
  $("viewer-title").textContent = hit.video_id;
  $("viewer-moment").textContent = `moment ${seconds(hit.start)} - ${seconds(hit.end)} (score ${hit.score.toFixed(4)})`;
  const player = $("player");
  const frames = $("frames");
  if (!hit.playable) {
    player.pause();
    player.hidden = true;
    frames.hidden = false;
    frames.replaceChildren();
    for (let i = 0; i < FRAMES_SHOWN; i += 1) {
      const time = hit.start + ((hit.end - hit.start) * i) / (FRAMES_SHOWN - 1);
      const figure = document.createElement("figure");
      const image = document.createElement("img");
      image.src = thumbnailUrl(hit, time);
      image.alt = `frame at ${seconds(time)}`;
      const caption = document.createElement("figcaption");
      caption.textContent = seconds(time);
      figure.append(image, caption);
      frames.appendChild(figure);
    }
    return;
  }
  frames.hidden = true;
  player.hidden = false;
  delete player.dataset.seeked;
  const seek = () => {
    player.addEventListener("seeked", () => { player.dataset.seeked = String(hit.start); }, { once: true });
    player.currentTime = hit.start;
  };
  const url = videoUrl(hit);
  if (player.getAttribute("src") === url && player.readyState >= 1) {
    seek();
  } else {
    player.addEventListener("loadedmetadata", seek, { once: true });
    player.src = url;
  }
}

let latest = 0; // only the newest search may fill the list (an older answer can arrive later)

async function runSearch(query, k) {
  const ticket = ++latest;
  const status = $("status");
  const results = $("results");
  status.className = "";
  status.textContent = "Searching…";
  const started = performance.now();
  const params = new URLSearchParams({ q: query, k });
  const response = await fetch(`/api/search?${params}`);
  const body = await response.json();
  if (ticket !== latest) return;
  results.replaceChildren();
  if (!response.ok) {
    status.className = "error";
    status.textContent = typeof body.detail === "string" ? body.detail : "invalid request";
    return;
  }
  const elapsed = Math.round(performance.now() - started);
  const how = body.exact ? "exact search: every clip of every video was scored"
    : "approximate search: a FAISS first stage proposed candidates, their clips were scored exactly";
  status.textContent = `${body.results.length} videos in ${elapsed} ms · ${how}`;
  body.results.forEach((hit) => results.appendChild(resultItem(hit)));
}

function submitted(event) {
  event.preventDefault();
  const query = $("query").value;
  const k = $("k").value;
  const url = `/?${new URLSearchParams({ q: query, k })}`;
  if (url !== `${location.pathname}${location.search}`) history.pushState({ q: query, k }, "", url);
  runSearch(query, k);
}

// The search the URL names, if any (on load, and on back/forward); no q: the empty page.
function searchFromUrl() {
  const params = new URLSearchParams(location.search);
  const query = params.get("q");
  $("k").value = params.get("k") ?? defaultK;
  if (query === null || query.trim() === "") {
    latest += 1; // a search still under way must not fill the page any more
    $("query").value = "";
    $("results").replaceChildren();
    $("status").textContent = "";
    return;
  }
  $("query").value = query;
  runSearch(query, $("k").value);
}

$("search-form").addEventListener("submit", submitted);
window.addEventListener("popstate", searchFromUrl);
loadInfo().then(searchFromUrl);
