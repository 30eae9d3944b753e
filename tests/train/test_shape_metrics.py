import numpy as np
import pytest

from kdmsi_train.shape_metrics import BoundaryScore, ObjectCounts, boundary, components, dilate


def _square(size=32, r0=8, r1=20, c0=8, c1=20):
    m = np.zeros((size, size), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_boundary_is_the_rim_and_not_the_tile_edge():
    m = _square()
    b = boundary(m)
    assert b.sum() == 12 * 4 - 4
    assert not b[10:18, 10:18].any()
    full = np.ones((8, 8), bool)
    assert not boundary(full).any()


def test_dilation_is_a_disk_of_radius_two():
    m = np.zeros((9, 9), bool)
    m[4, 4] = True
    d = dilate(m, 2)
    assert d.sum() == 13  # the pixels with dy^2 + dx^2 <= 4
    assert d[4, 2] and d[2, 4] and d[3, 3] and not d[2, 3]


def test_boundary_f1_tolerates_two_pixels_only():
    truth = _square()
    score = BoundaryScore()
    score.update(_square(r0=10, r1=22), truth)  # shifted by 2 rows: within tolerance
    assert score.metrics()["boundary_f1"] == pytest.approx(1.0)
    score = BoundaryScore()
    score.update(_square(r0=12, r1=24, c0=12, c1=24), truth)  # 4 px off: rims mostly miss
    assert score.metrics()["boundary_f1"] < 0.5
    blob = BoundaryScore()
    blob.update(dilate(truth, 5), truth)  # a blob around the object: no outline at all
    assert blob.metrics()["boundary_f1"] == 0.0
    empty = BoundaryScore()
    empty.update(np.zeros_like(truth), truth)
    assert empty.metrics() == {"boundary_precision": 0.0, "boundary_recall": 0.0,
                               "boundary_f1": 0.0}


def test_components_are_eight_connected():
    m = np.zeros((6, 6), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours: one region
    m[4, 4] = m[4, 5] = True
    labels = components(m)
    assert len(np.unique(labels[m])) == 2
    assert labels[0, 0] == labels[1, 1] != labels[4, 4]
    assert (labels[~m] == 0).all()
    snake = np.zeros((9, 9), bool)
    snake[::2, :] = True
    snake[1::4, -1] = snake[3::4, 0] = True
    assert len(np.unique(components(snake)[snake])) == 1


def _flood_fill(mask: np.ndarray) -> np.ndarray:
    """8-connected regions, one breadth-first search per region: the plain reference."""
    labels = np.zeros(mask.shape, np.int64)
    count = 0
    for start in map(tuple, np.argwhere(mask)):
        if labels[start]:
            continue
        count += 1
        labels[start], queue = count, [start]
        while queue:
            y, x = queue.pop()
            for ny in range(max(y - 1, 0), min(y + 2, mask.shape[0])):
                for nx in range(max(x - 1, 0), min(x + 2, mask.shape[1])):
                    if mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = count
                        queue.append((ny, nx))
    return labels


def test_components_are_the_regions_of_a_flood_fill():
    rng = np.random.default_rng(0)
    for density in (0.2, 0.45, 0.6):
        m = rng.random((40, 50)) < density
        ours, reference = components(m), _flood_fill(m)
        pairs = set(zip(ours[m].tolist(), reference[m].tolist(), strict=True))
        assert len(pairs) == len(np.unique(ours[m])) == reference.max()  # the same partition
        assert (ours[~m] == 0).all()


def test_object_counts():
    truth = _square(size=40) | _square(size=40, r0=30, r1=36, c0=30, c1=36)
    predicted = _square(size=40, r0=10, r1=14, c0=10, c1=14)  # hits the first object
    predicted[0:2, 36:40] = True  # a false object
    predicted[30:33, 0:3] = True  # another
    counts = ObjectCounts()
    counts.update(predicted, truth)
    assert counts.as_dict() == {"objects_hit": 1, "objects_missed": 1, "objects_false": 2}
    counts.update(truth, truth)
    assert counts.as_dict() == {"objects_hit": 3, "objects_missed": 1, "objects_false": 2}
