"""Per-class probability weights (``inference.class_weights``): manifest round trip and refusals,
the prior shift itself, and its effect (and override) in the predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lkseg.auto import AutoOptions, AutoSegmenter  # noqa: E402
from lkseg.auto.predictor import _weigh_classes  # noqa: E402
from lkseg.errors import InputError, ModelError  # noqa: E402
from lkseg.labels import LabelTable  # noqa: E402
from lkseg.models import IntensitySpec, build_network, make_manifest, make_stage, unet_spec, write_package  # noqa: E402
from lkseg.models.manifest import InferenceSpec, load_manifest  # noqa: E402
from lkseg.volume import Volume  # noqa: E402

LABELS = {1: "liver", 2: "liver_tumor", 3: "spleen"}


pytestmark = pytest.mark.usefixtures("private_onnx_cache")


@pytest.fixture(scope="module")
def weighted_package(tmp_path_factory):
    torch.manual_seed(1)
    fine = make_stage("fine", (6, 6, 6), (32, 32, 32), unet_spec(4, (4, 8, 16), 1), LABELS)
    manifest = make_manifest(
        "tiny-weights",
        "0.1.0",
        "test",
        LABELS,
        [fine],
        IntensitySpec((-200, 300), 50, 100),
        inference=InferenceSpec(cascade=False, class_weights={"liver": 1e6}),
    )
    return write_package(
        tmp_path_factory.mktemp("pkg") / "tiny-weights", manifest, {"fine": build_network(fine.network)}
    )


def _ct() -> Volume:
    rng = np.random.default_rng(0)
    arr = rng.normal(40, 60, (24, 28, 32)).astype(np.int16)
    return Volume.from_array(arr, (5.0, 5.0, 6.0), (0.0, 0.0, 0.0), np.eye(3))


def test_class_weights_round_trip_through_the_manifest(weighted_package):
    loaded = load_manifest(weighted_package.folder)
    assert loaded.inference.class_weights == {"liver": 1e6}
    data = json.loads((weighted_package.folder / "manifest.json").read_text())
    assert data["inference"]["class_weights"] == {"liver": 1e6}
    # packages without weights keep their JSON unchanged (no empty field written)
    assert "class_weights" not in InferenceSpec().to_json()


@pytest.mark.parametrize(
    ("weights", "message"),
    [({"liver_tumour": 2.0}, "not a label"), ({"liver": 0.0}, "positive"), ({"liver": "x"}, "positive"), ([2], "map")],
)
def test_bad_class_weights_are_refused(weighted_package, tmp_path, weights, message):
    data = json.loads((weighted_package.folder / "manifest.json").read_text())
    data["inference"]["class_weights"] = weights
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(data))
    (folder / "fine.pt").write_bytes((weighted_package.folder / "fine.pt").read_bytes())
    with pytest.raises(ModelError, match=message):
        load_manifest(folder)


def test_weighing_shifts_the_argmax_and_keeps_probabilities_normalised():
    probs = np.array([[0.5, 0.7], [0.3, 0.2], [0.2, 0.1]], dtype=np.float32)[:, :, None, None]  # (C, Z, 1, 1)
    labels = LabelTable({1: "liver", 2: "liver_tumor"})
    _weigh_classes(probs, {"liver_tumor": 3.0}, labels)
    assert probs[:, 0, 0, 0].argmax() == 2  # 0.6 beats 0.5 and 0.3
    assert probs[:, 1, 0, 0].argmax() == 0  # 0.3 does not beat 0.7
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-6)
    with pytest.raises(InputError, match="kidney_tumor"):
        _weigh_classes(probs, {"kidney_tumor": 2.0}, labels)


def test_predictor_applies_package_weights_and_options_override_them(weighted_package):
    seg = AutoSegmenter(weighted_package, device="cpu", threads=2, backend="torch")
    ct = _ct()
    liver = seg.output_table.value_of("liver")
    weighted = seg.predict(ct).labels.array
    assert np.all(weighted == liver)  # a factor of 1e6 makes every voxel liver
    plain = seg.predict(ct, options=AutoOptions(class_weights={})).labels.array
    assert not np.all(plain == liver)
    other = seg.predict(ct, options=AutoOptions(class_weights={"spleen": 1e6})).labels.array
    assert np.all(other == seg.output_table.value_of("spleen"))
