"""Semantic geocells (PIGEON / PIGEOTTO, CVPR 2024): cells that follow administrative borders.

The rules are those PIGEON's code applies (dataset_creation/geocell):

1. every photo takes the finest admin area holding it; a photo in none (at sea, in a gap
   between polygons) takes the area of the nearest photo that has one;
2. each area with photos is a cell; an area without photos joins the cell whose area
   centroid is nearest to its own (within its country here, so that no cell straddles a
   border; a country without any photo stays out of every cell);
3. a cell below the minimum photo count is merged into a touching cell of its country,
   looking in turn among the small cells of its admin-1 area, all cells of its admin-1
   area, the small cells of the country, all cells of the country, and taking the largest
   found; a cell that touches none (an island) stays small;
4. a cell above the maximum is split with OPTICS on its photos' (lon, lat), one parameter
   pass after another: clusters below the minimum become noise; with one cluster and the
   rest, the cluster's photos take the union of their Voronoi regions (clipped to the
   cell, holes filled) and the cell keeps the rest; with more, noise joins the nearest
   cluster centroid and each cluster takes its centroid's Voronoi region in the cell.

Areas that touch across the antimeridian are neighbours too (their shapes are compared
shifted by 360 degrees).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import shapely
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from geoloc.geo import to_unit_vectors
from geoloc.machine import cpu_count
from geoloc.places.boundaries import AdminAreas

ANTIMERIDIAN_DEGREES = 0.01
"""An area this close to longitude +-180 is also compared shifted by 360 degrees, for neighbours across the seam."""


@dataclass(frozen=True)
class Preset:
    """Minimum and maximum photos per cell and the OPTICS passes (min_samples, xi) that split large cells."""

    min_photos: int
    max_photos: int
    optics: tuple[tuple[int, float], ...]


PRESETS = {
    "pigeon": Preset(30, 60, ((8, 0.05), (10, 0.025), (15, 0.015))),
    "pigeotto": Preset(1000, 2000, ((300, 0.05), (400, 0.005), (1000, 0.0001))),
}
"""PIGEON (street view, MIN/MAX_CELL_SIZE 30/60, OPTICS_PARAMS_GEOGUESSR) and PIGEOTTO (MP-16, 1000/2000,
OPTICS_PARAMS_YFCC), as in its config.py and cell_collection.py."""


@dataclass
class SemanticCells:
    """The cells: per distinct coordinate its cell, and per cell its shape and names."""

    labels: NDArray[np.int64]
    shapes: list[shapely.Geometry]
    names: pl.DataFrame
    """country, admin1, admin2 (the finest area's name), areas (admin areas merged into it)."""
    small: int = 0
    """Cells left below the minimum (nothing of their country touches them)."""
    notes: list[str] = field(default_factory=list)


def photo_areas(areas: AdminAreas, lat: NDArray[np.float64], lon: NDArray[np.float64]) -> NDArray[np.int64]:
    """Rule 1: the area of each coordinate, else that of the nearest coordinate (on the sphere) with one."""
    found = areas.locate(lat, lon)
    located = found >= 0
    if located.any() and not located.all():
        vectors = to_unit_vectors(lat, lon)
        _, nearest = cKDTree(vectors[located]).query(vectors[~located], k=1, workers=cpu_count())
        found[~located] = found[located][nearest]
    return found


def _area_centres(areas: AdminAreas) -> NDArray[np.float64]:
    centres = shapely.centroid(areas.geometry)
    return to_unit_vectors(shapely.get_y(centres), shapely.get_x(centres))


def attach_empty_areas(areas: AdminAreas, cell_of_area: NDArray[np.int64]) -> NDArray[np.int64]:
    """Rule 2: each area without a cell joins the cell of the nearest (by centroid) area of its country with one."""
    result = cell_of_area.copy()
    centres = _area_centres(areas)
    countries = areas.names["country"].to_numpy()
    for country in np.unique(countries[cell_of_area < 0]):
        own = countries == country
        full, empty = own & (cell_of_area >= 0), own & (cell_of_area < 0)
        if not full.any():
            continue
        _, nearest = cKDTree(centres[full]).query(centres[empty], k=1)
        result[empty] = cell_of_area[full][nearest]
    return result


def area_neighbours(areas: AdminAreas) -> NDArray[np.int64]:
    """Pairs (i, j), i < j, of areas of one country whose shapes intersect, across the antimeridian too."""
    tree = areas.tree
    left, right = tree.query(areas.geometry, predicate="intersects")
    bounds = shapely.bounds(areas.geometry)
    pairs = [np.column_stack([left, right])]
    for shift, near_edge in ((360.0, bounds[:, 0] <= -180 + ANTIMERIDIAN_DEGREES),
                             (-360.0, bounds[:, 2] >= 180 - ANTIMERIDIAN_DEGREES)):
        rows = np.flatnonzero(near_edge)
        if len(rows):
            moved = shapely.transform(areas.geometry[rows], lambda xy, dx=shift: xy + [dx, 0.0])
            a, b = tree.query(shapely.buffer(moved, ANTIMERIDIAN_DEGREES), predicate="intersects")
            pairs.append(np.column_stack([rows[a], b]))
    pairs = np.concatenate(pairs)
    countries = areas.names["country"].to_numpy()
    keep = (pairs[:, 0] < pairs[:, 1]) & (countries[pairs[:, 0]] == countries[pairs[:, 1]])
    return np.unique(pairs[keep], axis=0)


class _Merger:
    """Rule 3 over cells as a graph: sizes, admin-1 names and touching cells, merged in place."""

    def __init__(self, sizes: NDArray[np.int64], admin1: NDArray[np.object_], pairs: NDArray[np.int64]) -> None:
        self.size = sizes.astype(np.int64).copy()
        self.admin1 = admin1
        self.into = np.arange(len(sizes))
        self.touching: list[set[int]] = [set() for _ in sizes]
        for a, b in pairs.tolist():
            if a != b:
                self.touching[a].add(b)
                self.touching[b].add(a)

    def _choose(self, cell: int, minimum: int) -> int | None:
        around = self.touching[cell]
        same = [n for n in around if self.admin1[n] == self.admin1[cell]]
        for pool, small_only in ((same, True), (same, False), (list(around), True), (list(around), False)):
            found = [n for n in pool if not small_only or self.size[n] < minimum]
            if found:
                return max(found, key=lambda n: (self.size[n], -n))
        return None

    def merge_small(self, minimum: int, rng: np.random.Generator) -> int:
        """Merge until every cell reaches `minimum` or touches nothing; the cells left small."""
        queue = list(rng.permutation(np.flatnonzero(self.size < minimum)))
        stuck = 0
        while queue:
            cell = int(queue.pop())
            if self.into[cell] != cell or self.size[cell] >= minimum:
                continue
            other = self._choose(cell, minimum)
            if other is None:
                stuck += 1
                continue
            self.into[other] = cell
            self.size[cell] += self.size[other]
            self.size[other] = 0
            for n in self.touching[other]:
                self.touching[n].discard(other)
                if n != cell:
                    self.touching[n].add(cell)
                    self.touching[cell].add(n)
            self.touching[cell].discard(other)
            self.touching[other] = set()
            if self.size[cell] < minimum:
                queue.insert(0, cell)
        return stuck

    def roots(self) -> NDArray[np.int64]:
        """The cell each original cell ended in."""
        into = self.into.copy()
        while True:
            nxt = into[into]
            if (nxt == into).all():
                return into
            into = nxt


def _fill_holes(shape: shapely.Geometry) -> shapely.Geometry:
    return shapely.Polygon(shape.exterior) if isinstance(shape, shapely.Polygon) else shape


def _voronoi(points: NDArray[np.float64], shape: shapely.Geometry) -> NDArray[np.object_]:
    """The Voronoi region of each (lon, lat) point, in order, clipped to `shape`."""
    regions = shapely.voronoi_polygons(shapely.multipoints(points), extend_to=shape.envelope.buffer(1.0),
                                       ordered=True)
    return shapely.intersection(np.asarray(shapely.get_parts(regions), dtype=object), shape)


OPTICS_MAX_PHOTOS = 5_000
"""OPTICS with no distance bound costs the square of its points: a cell with more photos is clustered on a
seeded sample of this many (min_samples scaled by the same share), each coordinate taking the label of the
nearest sampled photo."""


def photo_sample(photos: NDArray[np.int64], min_samples: int, max_photos: int) -> tuple[NDArray[np.int64], int]:
    """The coordinate of each photo OPTICS clusters (all, or a seeded sample of `max_photos`) and its min_samples."""
    expanded = np.repeat(np.arange(len(photos)), photos)
    if len(expanded) <= max_photos:
        return expanded, min_samples
    sample = np.sort(np.random.default_rng(0).choice(expanded, max_photos, replace=False))
    return sample, max(2, round(min_samples * max_photos / len(expanded)))


def optics_labels(points: NDArray[np.float64], photos: NDArray[np.int64], min_samples: int, xi: float,
                  max_photos: int = OPTICS_MAX_PHOTOS) -> NDArray[np.int64]:
    """OPTICS cluster (-1: none) of each distinct coordinate, clustering one point per photo."""
    from sklearn.cluster import OPTICS

    expanded, min_samples = photo_sample(photos, min_samples, max_photos)
    with np.errstate(divide="ignore", invalid="ignore"):  # repeated coordinates: zero reachability distances
        labels = OPTICS(min_samples=min_samples, xi=xi).fit_predict(points[expanded])
    if len(expanded) < photos.sum():
        _, nearest = cKDTree(points[expanded]).query(points, k=1)
        return labels[nearest]
    return labels[np.unique(expanded, return_index=True)[1]]  # a coordinate's label: that of its first photo


def split_cell(points: NDArray[np.float64], photos: NDArray[np.int64], shape: shapely.Geometry, preset: Preset,
               min_samples: int, xi: float) -> list[tuple[NDArray[np.int64], shapely.Geometry]] | None:
    """Rule 4 for one cell and one OPTICS pass: (member rows, shape) of each resulting cell, the cell itself
    (what remains of it) first; None when the pass does not split it."""
    if photos.sum() <= min_samples:
        return None
    label = optics_labels(points, photos, min_samples, xi)
    counts = {int(c): int(photos[label == c].sum()) for c in np.unique(label)}
    large = [c for c, n in counts.items() if n >= preset.min_photos]
    label = np.where(np.isin(label, large), label, -1)
    clusters = sorted(c for c in large if c != -1)
    if len(large) < 2:
        return None
    if len(clusters) == 1:
        if counts.get(-1, 0) > preset.max_photos or -1 not in large:
            return None
        return _separate_one(points, label, clusters[0], shape)
    centres = np.array([np.average(points[label == c], axis=0, weights=photos[label == c]) for c in clusters])
    noise = label == -1
    if noise.any():
        _, nearest = cKDTree(centres).query(points[noise], k=1)
        label[noise] = np.asarray(clusters)[nearest]
    if len(clusters) == 2:
        return _separate_one(points, label, clusters[0], shape)
    regions = _voronoi(centres, shape)
    return [(np.flatnonzero(label == c), _fill_holes(region)) for c, region in zip(clusters, regions)]


def _separate_one(points: NDArray[np.float64], label: NDArray[np.int64], cluster: int, shape: shapely.Geometry
                  ) -> list[tuple[NDArray[np.int64], shapely.Geometry]]:
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    regions = _voronoi(unique, shape)
    members = label == cluster
    taken = _fill_holes(shapely.union_all(regions[np.unique(inverse[members])]))
    taken = shapely.intersection(taken, shape)
    return [(np.flatnonzero(~members), shapely.difference(shape, taken)), (np.flatnonzero(members), taken)]


@dataclass
class _Cell:
    rows: NDArray[np.int64]
    shape: shapely.Geometry
    names: tuple[str, str, str, int]


def split_large(cells: list[_Cell], lat: NDArray[np.float64], lon: NDArray[np.float64], photos: NDArray[np.int64],
                preset: Preset, say: Callable[[str], None]) -> list[_Cell]:
    """Rule 4 over all cells: each OPTICS pass splits what is above the maximum until it splits no more."""
    points = np.column_stack([lon, lat])
    for min_samples, xi in preset.optics:
        todo = [i for i, cell in enumerate(cells) if photos[cell.rows].sum() > preset.max_photos]
        say(f"OPTICS pass (min_samples={min_samples}, xi={xi}): {len(todo):,} cells above {preset.max_photos}")
        while todo:
            again = []
            for index in todo:
                cell = cells[index]
                parts = split_cell(points[cell.rows], photos[cell.rows], cell.shape, preset, min_samples, xi)
                if parts is None:
                    continue
                (rest, rest_shape), *new = parts
                cells[index] = _Cell(cell.rows[rest], rest_shape, cell.names)
                positions = [index] + list(range(len(cells), len(cells) + len(new)))
                cells.extend(_Cell(cell.rows[rows], part, cell.names) for rows, part in new)
                again.extend(p for p in positions if photos[cells[p].rows].sum() > preset.max_photos)
            todo = again
    return [cell for cell in cells if len(cell.rows)]


def semantic_cells(areas: AdminAreas, lat: NDArray[np.float64], lon: NDArray[np.float64], photos: NDArray[np.int64],
                   preset: Preset, seed: int = 0, say: Callable[[str], None] = lambda line: None) -> SemanticCells:
    """Rules 1-4 on distinct coordinates (with their photo counts)."""
    say("locating photos in admin areas")
    area_of_point = photo_areas(areas, lat, lon)
    used, first_cell = np.unique(area_of_point, return_inverse=True)
    cell_of_area = np.full(len(areas), -1, dtype=np.int64)
    cell_of_area[used] = np.arange(len(used))
    say("attaching empty areas, finding touching areas")
    cell_of_area = attach_empty_areas(areas, cell_of_area)
    pairs = area_neighbours(areas.subset(np.flatnonzero(cell_of_area >= 0)))
    member_areas = np.flatnonzero(cell_of_area >= 0)
    cell_pairs = cell_of_area[member_areas][pairs]
    sizes = np.bincount(first_cell, weights=photos, minlength=len(used)).astype(np.int64)
    admin1 = areas.names["admin1"].to_numpy()[used]
    say(f"merging cells under {preset.min_photos} photos")
    merger = _Merger(sizes, admin1, cell_pairs)
    small = merger.merge_small(preset.min_photos, np.random.default_rng(seed))
    root = merger.roots()
    cell_of_area = np.where(cell_of_area >= 0, root[np.maximum(cell_of_area, 0)], -1)
    point_cell = root[first_cell]
    say("cell shapes (union of their areas)")
    area_photos = np.bincount(area_of_point, weights=photos, minlength=len(areas))
    cells = _merged_cells(areas, cell_of_area, point_cell, area_photos)
    say(f"splitting cells over {preset.max_photos} photos")
    cells = split_large(cells, lat, lon, photos, preset, say)
    labels = np.full(len(lat), -1, dtype=np.int64)
    for index, cell in enumerate(cells):
        labels[cell.rows] = index
    names = pl.DataFrame([cell.names for cell in cells], schema={"country": pl.Utf8, "admin1": pl.Utf8,
                                                                  "admin2": pl.Utf8, "areas": pl.Int64}, orient="row")
    return SemanticCells(labels, [cell.shape for cell in cells], names, small)


def _groups(of_cell: NDArray[np.int64], ids: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """For each id, the positions whose cell it is."""
    order = np.argsort(of_cell, kind="stable")
    ordered = of_cell[order]
    return [order[a:b] for a, b in zip(np.searchsorted(ordered, ids), np.searchsorted(ordered, ids, side="right"))]


def _merged_cells(areas: AdminAreas, cell_of_area: NDArray[np.int64], point_cell: NDArray[np.int64],
                  area_photos: NDArray[np.float64]) -> list[_Cell]:
    """One _Cell per merged cell: its coordinates, the union of its areas (on every core: GEOS runs without the
    GIL), and the names of its busiest area."""
    names = areas.names.select("country", "admin1", "name").rows()
    ids = np.unique(point_cell)
    members, rows = (_groups(of_cell, ids) for of_cell in (cell_of_area, point_cell))
    with ThreadPoolExecutor(cpu_count()) as pool:
        shapes = list(pool.map(lambda group: shapely.make_valid(shapely.union_all(areas.geometry[group])), members))
    busiest = [group[int(np.argmax(area_photos[group]))] for group in members]
    return [_Cell(r, shape, (*names[b], len(group))) for r, shape, b, group in zip(rows, shapes, busiest, members)]
