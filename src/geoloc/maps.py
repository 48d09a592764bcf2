"""Self-contained HTML maps of predictions: one file that opens offline in any browser.

Leaflet and a world outline (Natural Earth countries, 1:110M) are bundled inside the
package and inlined into the file, so the map means something without network. Map
tiles are off by default: a tile server sees which areas are viewed, which for a map
of someone's photos says where they were. `tiles=` turns them on, over the outline.
"""

from __future__ import annotations

import html
import json
import re

from geoloc.bundled import bundled
from geoloc.predict import PhotoGuess, guess_summary
from geoloc.recipe.engine import RecipeAnswer

ERROR_COLOURS = ((25.0, "#1a9850"), (200.0, "#91cf60"), (750.0, "#fc8d59"), (float("inf"), "#d73027"))
"""Truth-to-guess lines: green within 25 km, light green within 200, orange within 750, red beyond."""
ALTERNATIVE_COLOUR = "#3366cc"
SOURCE_COLOURS = {"retrieval": "#e6550d", "reverse": "#756bb1", "classifier": "#31a354", "geoclip": "#3182bd",
                  "zeroshot": "#d6616b", "plonk": "#8c6d31"}
"""Candidates on a recipe's map, coloured by the source that gave them."""


SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})
"""JSON escapes for the characters that could end a <script> or change how it is parsed (`</script>`,
`<!--`, `<script`): any file name can then sit inside one as data."""


def _script_json(value: object) -> str:
    """JSON that can sit inside <script> whatever its strings hold: no <, > or & appears literally."""
    return json.dumps(value, separators=(",", ":")).translate(SCRIPT_SAFE)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>__LEAFLET_CSS__</style>
<style>
  html, body { margin: 0; height: 100%; font: 14px system-ui, sans-serif; }
  #map { height: 100%; background: #cfe3f3; }
  .legend { background: white; padding: 6px 10px; border-radius: 4px; line-height: 1.5; }
  .legend i { display: inline-block; width: 12px; height: 12px; margin-right: 6px; border-radius: 6px; }
</style>
</head>
<body>
<div id="map"></div>
<script>__LEAFLET_JS__</script>
<script>
const world = __WORLD__;
const photos = __PHOTOS__;
const tiles = __TILES__;
const colours = __COLOURS__;
const sources = __SOURCES__;
const map = L.map("map", {worldCopyJump: true}).setView([20, 0], 2);
L.geoJSON(world, {style: {color: "#8a8a8a", weight: 0.6, fillColor: "#f4f1ea", fillOpacity: 1}}).addTo(map);
if (tiles) { L.tileLayer(tiles, {maxZoom: 18, opacity: 0.9}).addTo(map); }
function text(value) { const span = document.createElement("span"); span.textContent = value; return span.innerHTML; }
function errorColour(km) { return colours.find(([limit]) => km <= (limit === null ? Infinity : limit))[1]; }
const bounds = L.latLngBounds([]);
for (const photo of photos) {
  const where = [photo.lat, photo.lon];
  bounds.extend(photo.region_bounds);
  let popup = `<b>${text(photo.image)}</b><br>${text(photo.place)}<br>${photo.lat.toFixed(4)}, ${photo.lon.toFixed(4)}`
    + `<br>${text(photo.summary)}, within ~${Math.round(photo.radius_km)} km`;
  if (photo.exif) { popup += `<br>EXIF GPS: ${photo.exif.lat.toFixed(5)}, ${photo.exif.lon.toFixed(5)}`; }
  if (photo.truth) { popup += `<br>truth: ${photo.truth.lat.toFixed(4)}, ${photo.truth.lon.toFixed(4)}`
    + ` (${Math.round(photo.error_km)} km off)`; }
  L.polygon(photo.region, {color: "#3366cc", weight: 1, fillOpacity: 0.12, className: "confidence-region"}).addTo(map);
  photo.alternatives.forEach((alt) => L.circleMarker([alt.lat, alt.lon], {radius: 4, color: alt.colour, weight: 1,
    fillOpacity: 0.4, className: "alternative"})
    .bindPopup(`${text(photo.image)}: ${text(alt.label)}<br>${text(alt.place)}`)
    .addTo(map));
  L.circleMarker(where, {radius: 7, color: "#1f3d99", fillColor: "#3366cc", fillOpacity: 0.9}).bindPopup(popup)
    .addTo(map);
  if (photo.exif) { L.circleMarker([photo.exif.lat, photo.exif.lon], {radius: 6, color: "#7b3294",
    fillOpacity: 0.8}).bindPopup(`${text(photo.image)}: EXIF GPS`).addTo(map); }
  if (photo.truth) {
    bounds.extend([photo.truth.lat, photo.truth.lon]);
    L.polyline([[photo.truth.lat, photo.truth.lon], where], {color: errorColour(photo.error_km), weight: 2}).addTo(map);
    L.circleMarker([photo.truth.lat, photo.truth.lon], {radius: 5, color: "#222", fillColor: "#222",
      fillOpacity: 1}).bindPopup(`${text(photo.image)}: truth`).addTo(map);
  }
}
if (bounds.isValid()) { map.fitBounds(bounds, {padding: [40, 40], maxZoom: 13}); }
const legend = L.control({position: "bottomleft"});
legend.onAdd = () => { const div = L.DomUtil.create("div", "legend");
  div.innerHTML = `<i style="background:#3366cc"></i>guess (shaded: within the confidence radius)<br>`
    + `<i style="background:#7b3294"></i>EXIF GPS<br><i style="background:#222"></i>truth`
    + sources.map(([name, colour]) => `<br><i style="background:${colour}"></i>${text(name)} candidates`).join("");
  return div; };
legend.addTo(map);
</script>
</body>
</html>
"""


def map_html(
    guesses: list[PhotoGuess],
    truth: dict[str, tuple[float, float]] | None = None,
    tiles: str | None = None,
    title: str = "geoloc predictions",
) -> str:
    """The page: every guess with its alternatives and confidence region; truth lines when given."""
    photos = [_photo(guess, guess_summary(guess),
                     [{"lat": c.lat, "lon": c.lon, "place": c.place, "colour": ALTERNATIVE_COLOUR,
                       "label": f"alternative, p = {c.prob:.3f}"} for c in guess.candidates[1:]])
              for guess in guesses]
    return _page(photos, truth, tiles, title, {})


def recipe_map_html(
    answers: list[RecipeAnswer],
    truth: dict[str, tuple[float, float]] | None = None,
    tiles: str | None = None,
    title: str = "geoloc predictions (recipe)",
) -> str:
    """The page of a recipe's answers: every source's candidates in the source's colour, the ranked winner."""
    photos = [_photo(answer, f"chosen from {answer.source}",
                     [{"lat": c.lat, "lon": c.lon, "place": c.place, "colour": SOURCE_COLOURS[c.source],
                       "label": f"{c.source} #{c.rank + 1}"} for c in answer.candidates])
              for answer in answers]
    shown = {c.source for answer in answers for c in answer.candidates}
    return _page(photos, truth, tiles, title, {name: colour for name, colour in SOURCE_COLOURS.items()
                                               if name in shown})


def _photo(answer: PhotoGuess | RecipeAnswer, summary: str, alternatives: list[dict]) -> dict:
    """What the page draws of one photo's answer."""
    return {"image": answer.image, "image_id": answer.image_id, "lat": answer.lat, "lon": answer.lon,
            "place": answer.place, "summary": summary, "radius_km": answer.radius_km, "exif": answer.exif,
            "alternatives": alternatives}


def _page(photos: list[dict], truth: dict[str, tuple[float, float]] | None, tiles: str | None, title: str,
          sources: dict[str, str]) -> str:
    from geoloc.geo import drawable_region, great_circle_km

    for photo in photos:
        photo |= drawable_region(photo["lat"], photo["lon"], photo["radius_km"])
        if truth and photo["image_id"] in truth:
            lat, lon = truth[photo.pop("image_id")]
            photo["truth"] = {"lat": lat, "lon": lon}
            photo["error_km"] = float(great_circle_km(lat, lon, photo["lat"], photo["lon"]))
        photo.pop("image_id", None)
    colours = [[None if limit == float("inf") else limit, colour] for limit, colour in ERROR_COLOURS]
    replacements = {
        "__TITLE__": html.escape(title),
        "__LEAFLET_CSS__": bundled("leaflet/leaflet.css"),
        "__LEAFLET_JS__": bundled("leaflet/leaflet.js"),
        "__WORLD__": bundled("world_110m.geojson").translate(SCRIPT_SAFE),
        "__PHOTOS__": _script_json(photos),
        "__TILES__": _script_json(tiles),
        "__COLOURS__": _script_json(colours),
        "__SOURCES__": _script_json(list(sources.items())),
    }
    # One pass over the template, so nothing inserted is ever searched for markers.
    return re.sub("|".join(replacements), lambda match: replacements[match.group(0)], _PAGE)
