"use strict";
// The page of `geoloc serve`: send a photo to /api/predict, draw the answer on the map.
const map = L.map("map", {worldCopyJump: true}).setView([20, 0], 2);
const answerLayer = L.layerGroup().addTo(map);
const statusLine = document.getElementById("status");
let token = sessionStorage.getItem("geoloc-token") || "";

// Names (places, files) are text, never markup: Leaflet renders a string tooltip as HTML.
function textOf(value) {
  const span = document.createElement("span");
  span.textContent = value;
  return span;
}

function say(message, isError = false) {
  statusLine.textContent = message;
  statusLine.classList.toggle("error", isError);
}

function authorised(options = {}) {
  const headers = token ? {Authorization: `Bearer ${token}`} : {};
  return {...options, headers: {...(options.headers || {}), ...headers}};
}

async function drawBase() {
  const world = await (await fetch("/static/world.geojson")).json();
  L.geoJSON(world, {style: {color: "#8a8a8a", weight: 0.6, fillColor: "#f4f1ea", fillOpacity: 1}}).addTo(map);
  const config = await (await fetch("/api/config", authorised())).json().catch(() => ({}));
  if (config.tiles) {
    L.tileLayer(config.tiles, {maxZoom: 18, opacity: 0.9, attribution: config.attribution}).addTo(map);
  }
  describeRecipe(config);
}

async function waitUntilReady() {
  for (;;) {
    const response = await fetch("/api/health", authorised());
    if (response.status === 401) { askForToken(); return; }
    if (response.ok) { say("Ready: drop a photo."); return; }
    const body = await response.json().catch(() => ({}));
    say(body.error || "The model is loading…", response.status === 503 && !response.headers.get("Retry-After"));
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function askForToken() {
  say("This server needs an access token.", true);
  document.getElementById("token-form").hidden = false;
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("geoloc-token", token);
  document.getElementById("token-form").hidden = true;
  waitUntilReady();
});

// A recipe's candidates in their source's colour (the same colours as `geoloc predict --map`).
const SOURCE_COLOURS = {retrieval: "#e6550d", reverse: "#756bb1", classifier: "#31a354", geoclip: "#3182bd",
  zeroshot: "#d6616b", plonk: "#8c6d31"};

function describeRecipe(config) {
  if (!config.sources || !config.sources.length) { return; }
  const note = document.getElementById("recipe-note");
  note.textContent = `Candidates from: ${config.sources.join(", ")}.`
    + (config.photo_leaves_for.length ? ` The zero-shot source sends your photo to ${config.photo_leaves_for.join(", ")}:`
      + " it leaves this machine." : "");
  note.hidden = false;
  if (config.photo_leaves_for.length) {
    document.getElementById("privacy-note").textContent =
      "This server keeps your photo in memory for the answer and never stores it; the zero-shot source sends it on.";
  }
}

function listCandidates(answer) {
  // GeoCLIP alone: alternatives after the best guess, by probability. A recipe: every source's candidates.
  if (answer.source === undefined) {
    return answer.candidates.slice(1).map((alt) => ({...alt, colour: "#3366cc", label: `p = ${alt.prob.toFixed(3)}`,
      text: `${alt.place} (${alt.lat.toFixed(3)}, ${alt.lon.toFixed(3)}), p = ${alt.prob.toFixed(3)}`}));
  }
  return answer.candidates.map((alt) => ({...alt, colour: SOURCE_COLOURS[alt.source] || "#555",
    label: `${alt.source} #${alt.rank + 1}`,
    text: `${alt.source} #${alt.rank + 1}: ${alt.place} (${alt.lat.toFixed(3)}, ${alt.lon.toFixed(3)})`}));
}

function show(answer) {
  answerLayer.clearLayers();
  const where = [answer.lat, answer.lon];
  const summary = answer.source === undefined ? `p = ${answer.candidates[0].prob.toFixed(3)}`
    : `chosen from ${answer.source}`;
  document.getElementById("place").textContent = answer.place;
  document.getElementById("coordinates").textContent =
    `${answer.lat.toFixed(4)}, ${answer.lon.toFixed(4)} · ${summary} · within ~${Math.round(answer.radius_km)} km`
    + (answer.log_likelihood === undefined ? "" : ` · log-likelihood ${answer.log_likelihood.toFixed(2)}`
      + ` · localizability ${answer.localizability.toFixed(3)}`
      + ` · ${Math.round(answer.region_mass * 100)}% region ${Math.round(answer.region_km2).toLocaleString()} km²`);
  document.getElementById("exif").textContent = answer.exif
    ? `The photo's own EXIF GPS: ${answer.exif.lat.toFixed(5)}, ${answer.exif.lon.toFixed(5)} (not used for the guess)`
    : "The photo carries no GPS position.";
  const candidates = listCandidates(answer);
  const list = document.getElementById("alternatives");
  list.replaceChildren(...(answer.source === undefined ? answer.candidates : candidates).map((alt, index) => {
    const item = document.createElement("li");
    item.textContent = answer.source === undefined
      ? `${alt.place} (${alt.lat.toFixed(3)}, ${alt.lon.toFixed(3)}), p = ${alt.prob.toFixed(3)}` : alt.text;
    if (answer.source !== undefined) { item.style.borderLeft = `4px solid ${candidates[index].colour}`; }
    return item;
  }));
  document.getElementById("result").hidden = false;
  L.polygon(answer.region, {color: "#3366cc", weight: 1, fillOpacity: 0.12, className: "confidence-region"})
    .addTo(answerLayer);
  candidates.forEach((alt) => L.circleMarker([alt.lat, alt.lon],
    {radius: 5, color: alt.colour, weight: 1, fillOpacity: 0.5,
      className: `alternative-marker${alt.source ? ` source-${alt.source}` : ""}`})
    .bindTooltip(textOf(`${alt.place}: ${alt.label}`)).addTo(answerLayer));
  if (answer.exif) {
    L.circleMarker([answer.exif.lat, answer.exif.lon], {radius: 6, color: "#7b3294", fillOpacity: 0.8,
      className: "exif-marker"}).bindTooltip("EXIF GPS").addTo(answerLayer);
  }
  L.circleMarker(where, {radius: 8, color: "#1f3d99", fillColor: "#3366cc", fillOpacity: 0.9,
    className: "guess-marker"}).bindTooltip(textOf(answer.source === undefined ? `best guess: ${answer.place}`
    : `the ranker's choice (${answer.source}): ${answer.place}`)).addTo(answerLayer);
  // The region as far as it lies on the map (the server clips its bounds to Mercator's edge).
  map.fitBounds(answer.region_bounds, {padding: [20, 20], maxZoom: 13});
}

async function locate(file) {
  if (!file) { return; }
  const preview = document.getElementById("preview");
  preview.src = URL.createObjectURL(file);
  preview.style.display = "block";
  say("Locating…");
  const form = new FormData();
  form.append("photo", file);
  const response = await fetch("/api/predict", authorised({method: "POST", body: form}));
  const body = await response.json().catch(() => ({error: `the server answered ${response.status}`}));
  if (response.status === 401) { askForToken(); return; }
  if (!response.ok) { say(body.error, true); return; }
  say("Done: drop another photo to try again.");
  show(body);
}

const drop = document.getElementById("drop");
document.getElementById("photo").addEventListener("change", (event) => locate(event.target.files[0]));
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  locate(event.dataTransfer.files[0]);
});

drawBase();
waitUntilReady();
