"""One JSON reader for user files and model packages: every failure is a clear, specific error."""

from __future__ import annotations

import pytest

from lkseg.errors import InputError, ModelError
from lkseg.io.jsonfile import read_json


def test_reads_a_valid_document(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text('{"a": [1, 2.5, "é"]}', encoding="utf-8")
    assert read_json(path, "thing") == {"a": [1, 2.5, "é"]}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file (expected a markups JSON file)"),
        ("folder", "is a folder, not a markups JSON file"),
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"markups": [1, 2,]}', "invalid JSON at line 1, column 19"),
        ('{\n  "a": 1\n  "b": 2\n}', "invalid JSON at line 3, column 3"),
    ],
)
def test_each_failure_names_the_file_and_the_problem(tmp_path, content, expected):
    path = tmp_path / "plane.mrk.json"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        read_json(path, "markups JSON file")
    assert str(path) in str(info.value)
    assert expected in str(info.value)
    assert info.value.path == path


def test_model_errors_keep_their_class_and_the_path(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("not json", encoding="utf-8")
    with pytest.raises(ModelError) as info:
        read_json(path, "model manifest", ModelError)
    assert not isinstance(info.value, InputError)
    assert str(info.value).startswith(f"{path}: not a model manifest: invalid JSON at line 1, column 1")


def test_the_callers_use_it(tmp_path):
    """The plan CLI, the model manifest and the training data reader report a broken file alike."""
    from lkseg.cli.plan import read_plane_markups
    from lkseg.models.manifest import load_manifest
    from lkseg.train.dataset import LabelMapping

    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match="not a markups JSON file: invalid JSON"):
        read_plane_markups(bad)
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "manifest.json").write_text("{", encoding="utf-8")
    with pytest.raises(ModelError, match="not a model manifest: invalid JSON"):
        load_manifest(package)
    with pytest.raises(InputError, match="not a label mapping JSON file: invalid JSON"):
        LabelMapping.parse(str(bad))
