// The search page: queries the service's JSON API and renders result cards. No framework, no
// build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (s) => `${s.toFixed(1)}s`;

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function setMessage(text, isError = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", isError);
}

function render(hits, heading) {
  const results = $("results");
  results.replaceChildren();
  setMessage(hits.length ? heading : `${heading}: nothing found`);
  hits.forEach((hit, i) => {
    const card = $("card").content.firstElementChild.cloneNode(true);
    card.dataset.videoId = hit.video_id;
    const middle = (hit.start_s + hit.end_s) / 2;
    const img = card.querySelector("img");
    img.src = `/thumbnail/${encodeURIComponent(hit.video_id)}?t=${middle.toFixed(1)}`;
    img.alt = hit.captions[0] || hit.video_id;
    card.querySelector(".span").textContent = `${fmt(hit.start_s)}–${fmt(hit.end_s)}`;
    card.querySelector(".rank").textContent = `#${i + 1}`;
    const score = hit.fused_score !== undefined
      ? `${hit.score.toFixed(3)} · fused ${hit.fused_score.toFixed(4)}` : hit.score.toFixed(3);
    card.querySelector(".score").textContent = score;
    card.querySelector(".caption").textContent = hit.captions[0] || "(no caption)";
    card.querySelector(".id").textContent = hit.video_id;
    card.querySelector(".thumb").addEventListener("click", () => play(hit, card));
    card.querySelector(".similar").addEventListener("click", () => similar(hit.video_id));
    results.append(card);
  });
}

function play(hit, card) {
  document.querySelectorAll(".card.playing").forEach((c) => c.classList.remove("playing"));
  card.classList.add("playing");
  const video = $("video");
  $("player").hidden = false;
  $("player-title").textContent = hit.video_id;
  $("player-span").textContent =
    `best segment ${fmt(hit.start_s)}–${fmt(hit.end_s)} (score ${hit.segment_score.toFixed(3)})`;
  $("player-captions").replaceChildren(...hit.captions.map((c) => {
    const li = document.createElement("li");
    li.textContent = c;
    return li;
  }));
  video.src = `/video/${encodeURIComponent(hit.video_id)}#t=${hit.start_s.toFixed(2)}`;
  video.addEventListener("loadedmetadata", () => {
    video.currentTime = hit.start_s;
    video.play().catch(() => {});  // autoplay may be refused; the controls remain
  }, { once: true });
  $("player").scrollIntoView({ block: "nearest" });
}

function params() {
  const p = new URLSearchParams({ q: $("q").value, k: $("k").value });
  if ($("hybrid").checked) p.set("hybrid", "1");
  if ($("moments").checked) p.set("by", "moments");
  if ($("split").value.trim()) p.set("split", $("split").value.trim());
  return p;
}

async function search(event) {
  if (event) event.preventDefault();
  const p = params();
  history.replaceState(null, "", `?${p}`);
  setMessage("searching…");
  try {
    const started = performance.now();
    const body = await getJSON(`/search?${p}`);
    const ms = Math.round(performance.now() - started);
    render(body.hits, `${body.hits.length} videos for “${body.query}”${body.hybrid ? " (hybrid)" : ""}${body.by === "moments" ? " (by moments)" : ""} in ${ms} ms`);
  } catch (err) {
    $("results").replaceChildren();
    setMessage(err.message, true);
  }
}

async function similar(videoId) {
  setMessage("searching…");
  try {
    const p = new URLSearchParams({ k: $("k").value });
    if ($("split").value.trim()) p.set("split", $("split").value.trim());
    const body = await getJSON(`/similar/${encodeURIComponent(videoId)}?${p}`);
    render(body.hits, `${body.hits.length} videos like ${videoId}`);
  } catch (err) {
    setMessage(err.message, true);
  }
}

async function init() {
  $("search").addEventListener("submit", search);
  $("player-close").addEventListener("click", () => {
    $("video").pause();
    $("player").hidden = true;
  });
  try {
    const health = await getJSON("/health");
    $("status").textContent = health.error
      ? health.error : `table ${health.table} · ${health.rows} videos · ${health.model_id}`;
  } catch (err) {
    $("status").textContent = `service unreachable: ${err.message}`;
  }
  const given = new URLSearchParams(location.search);
  if (given.get("q")) {
    $("q").value = given.get("q");
    $("hybrid").checked = given.get("hybrid") === "1";
    $("moments").checked = given.get("by") === "moments";
    if (given.get("split")) $("split").value = given.get("split");
    search();
  }
}

init();
