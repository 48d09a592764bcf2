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

function show(answer) {
  answerLayer.clearLayers();
  const where = [answer.lat, answer.lon];
  const best = answer.candidates[0];
  document.getElementById("place").textContent = answer.place;
  document.getElementById("coordinates").textContent =
    `${answer.lat.toFixed(4)}, ${answer.lon.toFixed(4)} · p = ${best.prob.toFixed(3)} · within ~${Math.round(answer.radius_km)} km`
    + (answer.log_likelihood === undefined ? "" : ` · log-likelihood ${answer.log_likelihood.toFixed(2)}`
      + ` · localizability ${answer.localizability.toFixed(3)}`
      + ` · ${Math.round(answer.region_mass * 100)}% region ${Math.round(answer.region_km2).toLocaleString()} km²`);
  document.getElementById("exif").textContent = answer.exif
    ? `The photo's own EXIF GPS: ${answer.exif.lat.toFixed(5)}, ${answer.exif.lon.toFixed(5)} (not used for the guess)`
    : "The photo carries no GPS position.";
  const list = document.getElementById("alternatives");
  list.replaceChildren(...answer.candidates.map((alt) => {
    const item = document.createElement("li");
    item.textContent = `${alt.place} (${alt.lat.toFixed(3)}, ${alt.lon.toFixed(3)}), p = ${alt.prob.toFixed(3)}`;
    return item;
  }));
  document.getElementById("result").hidden = false;
  L.polygon(answer.region, {color: "#3366cc", weight: 1, fillOpacity: 0.12, className: "confidence-region"})
    .addTo(answerLayer);
  answer.candidates.slice(1).forEach((alt) => L.circleMarker([alt.lat, alt.lon],
    {radius: 5, color: "#3366cc", weight: 1, fillOpacity: 0.4, className: "alternative-marker"})
    .bindTooltip(textOf(`${alt.place}: p = ${alt.prob.toFixed(3)}`)).addTo(answerLayer));
  if (answer.exif) {
    L.circleMarker([answer.exif.lat, answer.exif.lon], {radius: 6, color: "#7b3294", fillOpacity: 0.8,
      className: "exif-marker"}).bindTooltip("EXIF GPS").addTo(answerLayer);
  }
  L.circleMarker(where, {radius: 8, color: "#1f3d99", fillColor: "#3366cc", fillOpacity: 0.9,
    className: "guess-marker"}).bindTooltip(textOf(`best guess: ${answer.place}`)).addTo(answerLayer);
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
