"""Segmentation value: segments, masks, label tables, layers for overlaps, editing."""

from __future__ import annotations

import numpy as np
import pytest

from lkseg.errors import GeometryMismatchError, InputError
from lkseg.labels import PRODUCT_LABELS, STRUCTURES, LabelTable
from lkseg.segmentation import Segment, Segmentation, find_structure, parse_terminology
from lkseg.volume import Grid, Volume


def _labels(shape=(6, 7, 8)) -> Volume:
    arr = np.zeros(shape, np.uint8)
    arr[1:4, 1:5, 1:4] = 1  # liver
    arr[2, 2, 2] = 2  # liver tumour inside
    arr[1:3, 1:3, 5:7] = 3  # right kidney
    return Volume.from_array(arr, (0.8, 0.9, 2.5), (1.0, 2.0, 3.0))


def test_from_label_volume_names_colours_terminology():
    seg = Segmentation.from_label_volume(_labels(), PRODUCT_LABELS, drop_empty=True)
    assert seg.names == ["Liver", "Liver tumor", "Right kidney"]
    liver = seg.segment("liver")
    assert liver == seg.segment("Liver") == seg.segment("LIVER")
    assert liver.structure == "liver" and liver.value == 1 and liver.layer == 0
    assert liver.color == STRUCTURES["liver"].color
    assert "SCT^10200004^Liver" in liver.terminology
    tumour = seg.segment("liver_tumor")
    assert tumour.codes()["region"].value == "10200004"
    assert seg.voxel_count("liver") == 3 * 4 * 3 - 1
    assert seg.mask("Liver tumor").sum() == 1 and seg.mask("Liver tumor")[2, 2, 2]
    assert seg.volume_ml("liver") == pytest.approx(35 * 0.8 * 0.9 * 2.5 / 1000)
    assert dict(seg.label_table()) == {1: "liver", 2: "liver_tumor", 3: "kidney_right"}
    np.testing.assert_array_equal(seg.to_label_volume().array, _labels().array)
    with pytest.raises(InputError, match="no segment 'spleen'"):
        seg.mask("spleen")


def test_from_label_volume_keeps_unknown_values_and_empty_entries():
    labels = _labels()
    seg = Segmentation.from_label_volume(labels, {1: "liver", 9: "spleen"})
    assert seg.names == ["Liver", "Spleen", "Label 2", "Label 3"]
    assert seg.voxel_count("Spleen") == 0
    assert seg.segment("Label 3").structure is None
    # nothing lost: flattening gives the input back
    np.testing.assert_array_equal(seg.to_label_volume().array, labels.array)
    # unknown names are kept verbatim so the label table round-trips
    seg2 = Segmentation.from_label_volume(labels, {1: "my_organ"})
    assert seg2.segment("my_organ").structure is None
    assert seg2.label_table()[1] == "my_organ"


def test_with_segment_overlap_modes():
    seg = Segmentation.from_label_volume(_labels(), {1: "liver", 2: "liver_tumor", 3: "kidney_right"})
    cube = np.zeros(seg.grid.shape, bool)
    cube[0:3, 0:3, 0:3] = True
    liver_before = seg.mask("liver")

    replaced = seg.with_segment("kidney_tumor", cube)  # default: paints over
    assert replaced.num_layers == 1
    assert replaced.segment("kidney_tumor").value == 4  # smallest free value
    np.testing.assert_array_equal(replaced.mask("kidney_tumor"), cube)
    np.testing.assert_array_equal(replaced.mask("liver"), liver_before & ~cube)

    kept = seg.with_segment("kidney_tumor", cube, overlap="keep")
    np.testing.assert_array_equal(kept.mask("liver"), liver_before)
    np.testing.assert_array_equal(kept.mask("kidney_tumor"), cube & (seg.labels.array == 0))

    layered = seg.with_segment("kidney_tumor", cube, overlap="layer")
    assert layered.num_layers == 2 and layered.segment("kidney_tumor").layer == 1
    np.testing.assert_array_equal(layered.mask("liver"), liver_before)
    np.testing.assert_array_equal(layered.mask("kidney_tumor"), cube)
    assert layered.layer_stack().shape == (2, *seg.grid.shape)
    # flattening: higher layer wins, values unique so kept
    flat = layered.to_label_volume().array
    assert np.all(flat[cube] == 4)
    assert layered.flattened().num_layers == 1

    # replacing an existing segment clears its old voxels, keeps value and colour
    small = np.zeros(seg.grid.shape, bool)
    small[5, 6, 7] = True
    again = seg.with_segment("liver", small)
    assert again.voxel_count("liver") == 1 and again.segment("liver").value == 1
    assert again.segment("liver").color == STRUCTURES["liver"].color

    removed = layered.without_segment("kidney_tumor")
    assert removed.num_layers == 1 and "kidney_tumor" not in removed
    with pytest.raises(InputError, match="shape"):
        seg.with_segment("spleen", np.zeros((2, 2, 2), bool))


def test_from_masks_packs_overlaps_into_layers_and_flattens_with_renumbering():
    grid = Grid((4, 5, 6), (1.0, 1.0, 1.0))
    a = np.zeros(grid.shape, bool)
    a[:2] = True
    b = np.zeros(grid.shape, bool)
    b[1:3] = True  # overlaps a on slice 1
    c = np.zeros(grid.shape, bool)
    c[3] = True
    seg = Segmentation.from_masks(
        grid, [(Segment("A", 1), a), (Segment("B", 1), b), (Segment("C", 2), np.flatnonzero(c))]
    )
    assert [s.layer for s in seg.segments] == [0, 1, 0]
    for name, mask in (("A", a), ("B", b), ("C", c)):
        np.testing.assert_array_equal(seg.mask(name), mask)
    # values collide across layers -> renumbered 1..N in segment order
    table = seg.label_table()
    assert dict(table) == {1: "A", 2: "B", 3: "C"}
    flat = seg.to_label_volume().array
    assert np.all(flat[1] == 2) and np.all(flat[0] == 1) and np.all(flat[3] == 3)


def test_to_grid_pads_cropped_segmentation_and_refuses_other_lattices():
    big = Grid((6, 7, 8), (0.5, 0.5, 2.0), (10.0, 20.0, 30.0), np.diag([-1.0, -1.0, 1.0]))
    arr = np.zeros((2, 3, 4), np.uint8)
    arr[1, 1, 1:3] = 1
    origin = big.index_to_lps([2, 3, 1])  # crop starts at i=2, j=3, k=1
    small = Volume.from_array(arr, big.spacing, origin, big.direction)
    seg = Segmentation.from_label_volume(small, {1: "liver"})
    placed = seg.to_grid(big)
    assert placed.grid.same_as(big)
    expected = np.zeros(big.shape, bool)
    expected[2, 4, 3:5] = True
    np.testing.assert_array_equal(placed.mask("liver"), expected)
    shifted = Grid(big.shape, big.spacing, tuple(np.add(big.origin, (0.25, 0, 0))), big.direction)
    with pytest.raises(GeometryMismatchError, match="lattice"):
        seg.to_grid(shifted)


def test_validation_errors():
    vol = _labels()
    with pytest.raises(InputError, match="named"):
        Segmentation(vol, (Segment("A", 1), Segment("A", 2)))
    with pytest.raises(InputError, match="used twice"):
        Segmentation(vol, (Segment("A", 1), Segment("B", 1)))
    with pytest.raises(InputError, match="layer"):
        Segmentation(vol, (Segment("A", 1, layer=1),))
    with pytest.raises(InputError, match=r"1\.\.65535"):
        Segment("A", 0)
    with pytest.raises(InputError, match="colour"):
        Segment("A", 1, (1.0, 2.0, 0.0))
    with pytest.raises(InputError, match="integer"):
        Segmentation(vol.astype(np.float32), ())


def test_structure_matching_and_terminology_parsing():
    assert find_structure("Right kidney") == "kidney_right"
    assert find_structure("kidney-right") == "kidney_right"
    tumour = STRUCTURES["kidney_tumor"]
    assert find_structure("Segment_1", tumour.type, tumour.region) == "kidney_tumor"
    assert find_structure("Segment_1", STRUCTURES["liver"].type) == "liver"
    assert find_structure("ribs") is None
    parsed = parse_terminology(STRUCTURES["liver_tumor"].terminology_string())
    assert parsed["type"].meaning == "Neoplasm" and parsed["region"].value == "10200004"
    assert parse_terminology("garbage") == {}
    assert (
        Segment("Ribs", 1, terminology="ctx~SCT^123037004^Anatomical Structure~SCT^113197003^Rib~^^~x~^^~^^")
        .codes()["type"]
        .value
        == "113197003"
    )
    assert isinstance(Segmentation.from_label_volume(_labels(), LabelTable({1: "liver"})).label_table(), LabelTable)
