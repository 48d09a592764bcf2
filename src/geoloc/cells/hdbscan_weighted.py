"""HDBSCAN of weighted points with exactly the labels of repeating each point `weight` times.

Photo collections repeat coordinates a lot (every photo of a Google Landmarks landmark
shares one), so `geoloc.cells` clusters distinct coordinates, each weighted by its
photos, and the labels must still be those of one point per photo. The libraries'
`sample_weight` does not give them: fast_hdbscan 0.3 counts a point's own weight towards
`min_samples` where its unweighted path does not, queries a fixed number of neighbours
(2 * min_samples / mean weight, fewer than a light point needs when repeats are heavy),
lets a heavy point that splits off a cluster fall out of it as a single point, and counts
each point as one photo when it scores stability. On 300 scattered points and one spot
shared by 40 photos, its weighted run calls the spot noise and finds 2 clusters where
the photo-by-photo run finds 18, the spot one of them.

Here, with w_p photos at coordinate p, the photo-by-photo hierarchy is rebuilt from the
distinct points only:

- core distance: as in fast_hdbscan and hdbscan, the distance to the min_samples-th
  nearest *other* photo, so 0 when w_p > min_samples, else found among the
  min_samples nearest distinct neighbours by adding up their photos;
- the minimum spanning tree of mutual reachability between distinct points, by Boruvka
  on a KD-tree with these core distances (the w_p copies of p are joined
  to each other at core(p), never above any edge of p). Written here because
  fast_hdbscan's Boruvka searches the whole tree for every point in every round; ours
  takes each round's edges from one 16-nearest-neighbour query made up front, and
  searches the tree only for the few points whose list cannot prove that no lighter
  edge leaves their component (a point not listed is at least as far as the last one
  listed). About 10x faster than fast_hdbscan's Boruvka on photo locations;
- the condensed tree counts photos: a side of a split is a cluster when it holds at
  least min_cluster_size photos, a point that falls out takes its w_p photos with it,
  and a coordinate that ends a cluster (w_p >= min_cluster_size) keeps its photos in
  it until its own core distance, where its copies part (lambda = 1 / core(p), infinite
  when the spot holds more than min_samples photos);
- excess of mass picks clusters by that photo-weighted stability, never the root (as
  the libraries do by default), and each coordinate takes the selected cluster it falls
  out of, or noise.

Where one-point-per-photo HDBSCAN itself depends on the order of points tied at one
mutual reachability distance (with min_samples > 1 it does, for a few photos: feeding
the library the same photos shuffled changes them), identical coordinates still get one
label here, which the library does not promise.
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree
from sklearn.neighbors import KDTree

from geoloc.machine import cpu_count

CERTIFYING_NEIGHBOURS = 16  # nearest distinct points listed per point for the Boruvka edges
SEARCH_STACK = 128
"""Nodes a tree walk keeps pending: at most the tree's depth + 1 (about 20 for 5 M points)."""
LEAF_SIZE = 40


@numba.njit(cache=True, inline="always")
def rdist(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Squared distance between two points."""
    total = 0.0
    for axis in range(a.shape[0]):
        total += (a[axis] - b[axis]) ** 2
    return total


@numba.njit(cache=True, inline="always")
def box_rdist(lower: NDArray[np.float64], upper: NDArray[np.float64], point: NDArray[np.float64]) -> float:
    """Squared distance from a point to a box (0 inside it): no point in the box is nearer."""
    total = 0.0
    for axis in range(point.shape[0]):
        gap = max(0.0, lower[axis] - point[axis], point[axis] - upper[axis])
        total += gap * gap
    return total


def core_distances(neighbour_distances: NDArray, neighbours: NDArray, weights: NDArray[np.int64],
                   min_samples: int) -> NDArray[np.float64]:
    """Distance to the min_samples-th nearest other photo, from each point's nearest distinct points (itself
    among them) sorted by distance; the point's own other photos are at distance 0."""
    photos = np.where(neighbours >= 0, weights[np.maximum(neighbours, 0)], 0)
    others = np.cumsum(photos, axis=1) - 1
    reached = others >= min_samples
    column = np.argmax(reached, axis=1)
    result = neighbour_distances[np.arange(len(neighbours)), column].astype(np.float64)
    result[~reached.any(axis=1)] = np.inf
    result[others[:, 0] >= min_samples] = 0.0
    return result


def mutual_reachability_mst(points: NDArray[np.float64], weights: NDArray[np.int64], min_samples: int
                            ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Edges (i, j, distance) of a minimum spanning tree of photo-weighted mutual reachability, and the core
    distances; Boruvka whose edges come from one kNN query, the KD-tree searched only where it cannot certify
    them (squared distances).

    The kNN lists come from scipy's cKDTree (on every core); the searches walk the nodes of
    scikit-learn's KDTree, read through its public `get_arrays` (points, their order in the
    leaves, each node's range, leaf flag and bounding box; children of node i at 2i+1, 2i+2).
    """
    points = np.ascontiguousarray(points, dtype=np.float64)
    n = len(points)
    k = min(max(CERTIFYING_NEIGHBOURS, min_samples + 1), n)
    distances, neighbours = cKDTree(points, leafsize=LEAF_SIZE).query(points, k=k, workers=cpu_count())
    squared = np.square(distances.reshape(n, k))
    neighbours = neighbours.reshape(n, k).astype(np.int32 if n < 2**31 else np.int64)
    core_columns = min(min_samples + 1, n)
    core = core_distances(squared[:, :core_columns], neighbours[:, :core_columns], weights, min_samples)
    data, idx_array, nodes, bounds = KDTree(points, leaf_size=LEAF_SIZE).get_arrays()
    edges = _boruvka(data, idx_array.astype(np.int64), nodes["idx_start"].astype(np.int64),
                     nodes["idx_end"].astype(np.int64), nodes["is_leaf"].astype(np.bool_), bounds,
                     neighbours, squared, core, k >= n)
    edges[:, 2] = np.sqrt(edges[:, 2])
    return edges, np.sqrt(core)


@numba.njit(parallel=True, cache=True)
def _listed_edges(neighbours: NDArray[np.integer], squared: NDArray[np.float64], core: NDArray[np.float64],
                  components: NDArray[np.int64], complete: bool
                  ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64]]:
    """Per point, its lightest listed edge leaving its component (weight, other end) and a lower bound on every
    edge it has leaving it: a point not in its list lies at least as far as its last neighbour, so such an edge
    weighs at least max(core, last distance); with every point listed (`complete`) there is none."""
    n, k = neighbours.shape
    best = np.full(n, np.inf, dtype=np.float64)
    other = np.full(n, -1, dtype=np.int64)
    lower = np.empty(n, dtype=np.float64)
    for p in numba.prange(n):
        component = components[p]
        for j in range(k):
            if squared[p, j] >= best[p]:  # sorted by distance: no later neighbour is lighter
                break
            q = neighbours[p, j]
            if q < 0 or components[q] == component:
                continue
            weight = max(core[p], core[q], squared[p, j])
            if weight < best[p]:
                best[p] = weight
                other[p] = q
        unlisted = np.inf if complete else max(core[p], squared[p, k - 1])
        lower[p] = min(best[p], unlisted)
    return best, other, lower


@numba.njit(cache=True)
def _node_components(components: NDArray[np.int64], idx_array: NDArray[np.intp], idx_start: NDArray[np.intp],
                     idx_end: NDArray[np.intp], is_leaf: NDArray[np.bool_]) -> NDArray[np.int64]:
    """The component every point of a tree node is in, -1 where they differ: whole nodes are skipped when
    searching for edges leaving a component."""
    nodes = idx_start.shape[0]
    result = np.full(nodes, -1, dtype=np.int64)
    for node in range(nodes - 1, -1, -1):
        if is_leaf[node]:
            first = components[idx_array[idx_start[node]]]
            same = True
            for i in range(idx_start[node] + 1, idx_end[node]):
                if components[idx_array[i]] != first:
                    same = False
                    break
            if same:
                result[node] = first
        elif result[2 * node + 1] == result[2 * node + 2]:
            result[node] = result[2 * node + 1]
    return result


@numba.njit(cache=True, fastmath=True)
def _search(p: int, data: NDArray[np.float64], idx_array: NDArray[np.intp], idx_start: NDArray[np.intp],
            idx_end: NDArray[np.intp], is_leaf: NDArray[np.bool_], bounds: NDArray[np.float64],
            node_components: NDArray[np.int64], components: NDArray[np.int64], core: NDArray[np.float64],
            limit: float) -> tuple[float, int]:
    """The lightest mutual reachability edge from point p out of its component lighter than `limit`, by a
    depth-first KD-tree walk skipping boxes too far and nodes inside p's component; (limit, -1) if none."""
    point = data[p]
    component = components[p]
    best, best_other = limit, -1
    nodes = np.empty(SEARCH_STACK, dtype=np.int64)
    gaps = np.empty(SEARCH_STACK, dtype=np.float64)
    nodes[0], gaps[0], top = 0, box_rdist(bounds[0, 0], bounds[1, 0], point), 1
    while top > 0:
        top -= 1
        node, gap = nodes[top], gaps[top]
        if gap >= best or node_components[node] == component:
            continue
        if is_leaf[node]:
            for i in range(idx_start[node], idx_end[node]):
                q = idx_array[i]
                if components[q] == component or core[q] >= best:
                    continue
                weight = max(rdist(point, data[q]), core[p], core[q])
                if weight < best:
                    best, best_other = weight, q
            continue
        left, right = 2 * node + 1, 2 * node + 2
        gap_left = box_rdist(bounds[0, left], bounds[1, left], point)
        gap_right = box_rdist(bounds[0, right], bounds[1, right], point)
        if gap_left <= gap_right:  # the nearer child on top of the stack
            nodes[top], gaps[top], nodes[top + 1], gaps[top + 1] = right, gap_right, left, gap_left
        else:
            nodes[top], gaps[top], nodes[top + 1], gaps[top + 1] = left, gap_left, right, gap_right
        top += 2
    return best, best_other


@numba.njit(parallel=True, cache=True)
def _searched_edges(searched: NDArray[np.int64], limits: NDArray[np.float64], data: NDArray[np.float64],
                    idx_array: NDArray[np.intp], idx_start: NDArray[np.intp], idx_end: NDArray[np.intp],
                    is_leaf: NDArray[np.bool_], bounds: NDArray[np.float64], node_components: NDArray[np.int64],
                    components: NDArray[np.int64], core: NDArray[np.float64]
                    ) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Tree searches for the points whose lightest outgoing edge the kNN lists cannot certify."""
    weight = np.empty(searched.shape[0], dtype=np.float64)
    other = np.empty(searched.shape[0], dtype=np.int64)
    for i in numba.prange(searched.shape[0]):
        p = searched[i]
        weight[i], other[i] = _search(p, data, idx_array, idx_start, idx_end, is_leaf, bounds, node_components,
                                      components, core, limits[components[p]])
    return weight, other


@numba.njit(cache=True)
def _boruvka(data: NDArray[np.float64], idx_array: NDArray[np.intp], idx_start: NDArray[np.intp],
             idx_end: NDArray[np.intp], is_leaf: NDArray[np.bool_], bounds: NDArray[np.float64],
             neighbours: NDArray[np.integer], squared: NDArray[np.float64], core: NDArray[np.float64],
             complete: bool) -> NDArray[np.float64]:
    """Minimum spanning tree edges (i, j, squared weight) by Boruvka rounds. A component's lightest outgoing
    edge is its points' lightest listed one when no point's lower bound is below it; otherwise only the points
    whose bound is below it search the tree, for lighter edges than it. Every round's edges are exact lightest
    ones, so ties can only close cycles of equal weight, which the union-find skips."""
    n = neighbours.shape[0]
    parent = np.arange(n)
    components = np.arange(n)
    edges = np.empty((max(n - 1, 0), 3), dtype=np.float64)
    count = 0
    comp_weight = np.empty(n, dtype=np.float64)
    comp_from = np.empty(n, dtype=np.int64)
    comp_to = np.empty(n, dtype=np.int64)
    while count < n - 1:
        best, other, lower = _listed_edges(neighbours, squared, core, components, complete)
        comp_weight[:] = np.inf
        comp_from[:] = -1
        for p in range(n):
            c = components[p]
            if best[p] < comp_weight[c]:
                comp_weight[c], comp_from[c], comp_to[c] = best[p], p, other[p]
        searched = np.flatnonzero(lower < np.minimum(best, comp_weight[components]))
        if searched.shape[0] > 0:
            node_components = _node_components(components, idx_array, idx_start, idx_end, is_leaf)
            found, found_other = _searched_edges(searched, comp_weight, data, idx_array, idx_start, idx_end,
                                                 is_leaf, bounds, node_components, components, core)
            for i in range(searched.shape[0]):
                p = searched[i]
                c = components[p]
                if found_other[i] >= 0 and found[i] < comp_weight[c]:
                    comp_weight[c], comp_from[c], comp_to[c] = found[i], p, found_other[i]
        merged = 0
        for c in range(n):
            if comp_from[c] < 0:
                continue
            a, b = _find(parent, comp_from[c]), _find(parent, comp_to[c])
            if a == b:
                continue
            parent[a] = b
            edges[count, 0], edges[count, 1], edges[count, 2] = comp_from[c], comp_to[c], comp_weight[c]
            count += 1
            merged += 1
        if merged == 0:
            break
        for p in range(n):
            components[p] = _find(parent, p)
    return edges[:count]


@numba.njit(cache=True)
def _find(parent: NDArray[np.int64], node: int) -> int:
    root = node
    while parent[root] != root:
        root = parent[root]
    while parent[node] != root:
        parent[node], node = root, parent[node]
    return root


@numba.njit(cache=True)
def _linkage(sorted_mst: NDArray[np.float64], weights: NDArray[np.float64], n: int):
    """Single linkage from MST edges sorted by distance: children, distance and photos of each merge."""
    parent = np.arange(2 * n - 1)
    left = np.empty(n - 1, dtype=np.int64)
    right = np.empty(n - 1, dtype=np.int64)
    size = np.zeros(2 * n - 1)
    size[:n] = weights
    for index in range(n - 1):
        a = _find(parent, np.int64(sorted_mst[index, 0]))
        b = _find(parent, np.int64(sorted_mst[index, 1]))
        node = n + index
        left[index], right[index] = a, b
        size[node] = size[a] + size[b]
        parent[a] = node
        parent[b] = node
    return left, right, sorted_mst[:, 2].copy(), size


@numba.njit(cache=True)
def _condense(left, right, distance, size, core, n: int, min_cluster_size: float):
    """Top-down condensed tree counting photos. Returns, per distinct point, the cluster it falls out of and
    at which lambda; per cluster, its parent, birth lambda and photos; clusters are numbered 0 (root) up."""
    point_cluster = np.full(n, -1, dtype=np.int64)
    point_lambda = np.zeros(n)
    cluster_parent = np.full(n, -1, dtype=np.int64)
    cluster_birth = np.zeros(n)
    cluster_size = np.zeros(n)
    owner = np.full(2 * n - 1, -1, dtype=np.int64)  # the cluster a node belongs to, -1 until reached
    root = 2 * n - 2
    owner[root] = 0
    cluster_size[0] = size[root]
    clusters = 1
    stack = [root]
    while len(stack) > 0:
        node = stack.pop()
        cluster = owner[node]
        if node < n:  # a coordinate that ends its cluster: its photos part at its own core distance
            point_cluster[node] = cluster
            point_lambda[node] = np.inf if core[node] == 0.0 else 1.0 / core[node]
            continue
        merge = node - n
        level = np.inf if distance[merge] == 0.0 else 1.0 / distance[merge]
        a, b = left[merge], right[merge]
        big_a, big_b = size[a] >= min_cluster_size, size[b] >= min_cluster_size
        if big_a and big_b:
            for child in (a, b):
                owner[child] = clusters
                cluster_parent[clusters] = cluster
                cluster_birth[clusters] = level
                cluster_size[clusters] = size[child]
                clusters += 1
                stack.append(child)
            continue
        for child, big in ((a, big_a), (b, big_b)):
            if big:
                owner[child] = cluster
                stack.append(child)
                continue
            falling = [child]
            while len(falling) > 0:  # every coordinate below a small side falls out here
                below = falling.pop()
                if below < n:
                    point_cluster[below] = cluster
                    point_lambda[below] = level
                else:
                    falling.append(left[below - n])
                    falling.append(right[below - n])
    return (point_cluster, point_lambda, cluster_parent[:clusters], cluster_birth[:clusters],
            cluster_size[:clusters])


@numba.njit(cache=True)
def _excess_of_mass(point_cluster, point_lambda, weights, cluster_parent, cluster_birth, cluster_size):
    """Selected clusters (never the root) by photo-weighted stability; children are numbered after parents."""
    clusters = len(cluster_parent)
    stability = np.zeros(clusters)
    for point in range(len(point_cluster)):
        cluster = point_cluster[point]
        gain = point_lambda[point] - cluster_birth[cluster]
        if point_lambda[point] == cluster_birth[cluster]:
            gain = 0.0
        stability[cluster] += weights[point] * gain
    for cluster in range(1, clusters):
        parent = cluster_parent[cluster]
        gain = cluster_birth[cluster] - cluster_birth[parent]
        if cluster_birth[cluster] == cluster_birth[parent]:
            gain = 0.0
        stability[parent] += cluster_size[cluster] * gain
    children_total = np.zeros(clusters)
    selected = np.zeros(clusters, dtype=np.bool_)
    has_children = np.zeros(clusters, dtype=np.bool_)
    for cluster in range(1, clusters):
        has_children[cluster_parent[cluster]] = True
    best = np.zeros(clusters)
    for cluster in range(clusters - 1, 0, -1):
        own = max(stability[cluster], 0.0)
        if has_children[cluster] and children_total[cluster] > own:
            best[cluster] = children_total[cluster]
        else:
            best[cluster] = own
            selected[cluster] = True
        children_total[cluster_parent[cluster]] += best[cluster]
    below_selected = np.zeros(clusters, dtype=np.bool_)
    for cluster in range(1, clusters):  # parents come first: a selected cluster's descendants are not selected
        parent = cluster_parent[cluster]
        below_selected[cluster] = below_selected[parent] or selected[parent]
        if below_selected[cluster]:
            selected[cluster] = False
    return selected


@numba.njit(cache=True)
def _selected_ids(selected, cluster_parent):
    """Each cluster's selected ancestor (or itself) as a dense id, -1 for none."""
    ids = np.full(len(selected), -1, dtype=np.int64)
    next_id = 0
    for cluster in range(1, len(selected)):
        if selected[cluster]:
            ids[cluster] = next_id
            next_id += 1
        else:
            ids[cluster] = ids[cluster_parent[cluster]]
    return ids


def weighted_hdbscan(points: NDArray[np.float64], weights: NDArray[np.int64], min_cluster_size: int,
                     min_samples: int) -> NDArray[np.int64]:
    """Labels of the distinct points (selected-cluster ids in tree order, noise -1) as if each were repeated
    `weights` times; see the module doc."""
    n = len(points)
    labels = np.full(n, -1, dtype=np.int64)
    if n < 2 or int(weights.sum()) < max(min_cluster_size, min_samples + 1):
        return labels
    mst, core = mutual_reachability_mst(points, weights, min_samples)
    order = np.lexsort((mst[:, 1], mst[:, 0], mst[:, 2]))
    left, right, distance, size = _linkage(mst[order], weights.astype(np.float64), n)
    point_cluster, point_lambda, parent, birth, cluster_size = _condense(
        left, right, distance, size, core, n, float(min_cluster_size))
    selected = _excess_of_mass(point_cluster, point_lambda, weights.astype(np.float64), parent, birth, cluster_size)
    return _selected_ids(selected, parent)[point_cluster]
