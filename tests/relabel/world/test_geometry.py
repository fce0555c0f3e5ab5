"""Outlines of pixel masks and turned corners."""

from __future__ import annotations

import numpy as np
import pytest

from relabel.world.geometry import mask_box, mask_to_polygons, ring_area, rotate_points


def test_outline_of_a_rectangle_encloses_exactly_its_pixels():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:8, 3:10] = True
    assert mask_box(mask) == (3, 2, 10, 8)
    (ring,) = mask_to_polygons(mask)
    assert ring == [3.0, 2.0, 10.0, 2.0, 10.0, 8.0, 3.0, 8.0]
    assert ring_area(ring) == mask.sum()


def test_each_part_gets_a_ring_largest_first_and_specks_are_dropped():
    mask = np.zeros((40, 40), dtype=bool)
    mask[2:8, 3:10] = True  # an L shape of 76 pixels with the bar below
    mask[5:15, 8:12] = True
    mask[20:30, 20:38] = True  # 180 pixels
    mask[35, 35] = True  # a one-pixel speck
    rings = mask_to_polygons(mask, min_pixels=12, tolerance=0)
    assert [ring_area(ring) for ring in rings] == [180.0, 76.0]


def test_diagonal_neighbours_are_separate_parts():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 2:5] = True
    mask[5:8, 5:8] = True
    assert len(mask_to_polygons(mask, min_pixels=1)) == 2


def test_a_disc_is_simplified_but_keeps_its_area():
    yy, xx = np.mgrid[0:60, 0:60]
    mask = (xx - 30) ** 2 + (yy - 30) ** 2 < 20**2
    (ring,) = mask_to_polygons(mask, tolerance=0.75)
    assert 8 <= len(ring) // 2 < 100
    assert ring_area(ring) == pytest.approx(mask.sum(), rel=0.05)


def test_an_empty_mask_has_no_outline():
    assert mask_to_polygons(np.zeros((5, 5), dtype=bool)) == []
    assert mask_box(np.zeros((5, 5), dtype=bool)) is None


def test_rotation_turns_counter_clockwise_on_screen():
    # a point right of the centre goes up (smaller y) when turned 90 degrees
    ((x, y),) = rotate_points([(10.0, 0.0)], 90, centre=(0.0, 0.0), to=(0.0, 0.0))
    assert (x, y) == pytest.approx((0.0, -10.0))
