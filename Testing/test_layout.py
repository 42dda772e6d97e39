"""Static checks of the 3D Slicer extension layout (no Slicer, no Qt needed).

The module file and its library compile; every widget the code uses exists in the .ui; every
``SlicerParameterName`` is a parameter-node field of a type the widget can be bound to; every .py
under ``LiverKidneySeg/`` is listed in its CMakeLists.txt; resources exist; Qt stays in the Widget.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "LiverKidneySeg"
MODULE_FILE = MODULE / "LiverKidneySeg.py"
LIB = MODULE / "LiverKidneySegLib"
UI_FILE = MODULE / "Resources" / "UI" / "LiverKidneySeg.ui"
sys.path.insert(0, str(ROOT / "scripts"))
from update_cmake_sources import listed_sources, python_sources  # noqa: E402

#: Widget classes -> value types the parameter node wrapper can bind them to (mirrors the
#: ``canRepresent`` methods of slicer.parameterNodeWrapper.guiConnectors).
CONNECTABLE = {
    "QCheckBox": {"bool"},
    "ctkCheckBox": {"bool"},
    "QPushButton": {"bool"},
    "ctkCheckablePushButton": {"bool"},
    "QSlider": {"int"},
    "QSpinBox": {"int"},
    "QDoubleSpinBox": {"float", "int"},
    "ctkDoubleSpinBox": {"float", "int"},
    "ctkSliderWidget": {"float", "int"},
    "qMRMLSliderWidget": {"float", "int"},
    "qMRMLSpinBox": {"float", "int"},
    "QComboBox": {"choice", "enum"},
    "ctkComboBox": {"choice", "enum"},
    "QLineEdit": {"str"},
    "QLabel": {"str"},
    "QTextEdit": {"str"},
    "ctkPathLineEdit": {"path"},
    "ctkDirectoryButton": {"path"},
    "qMRMLNodeComboBox": {"node"},
    "qSlicerSimpleMarkupsWidget": {"node"},
}
QT_GUI_HELPERS = {
    "errorDisplay",
    "warningDisplay",
    "infoDisplay",
    "confirmYesNoDisplay",
    "confirmOkCancelDisplay",
    "tryWithErrorDisplay",
    "loadUI",
    "childWidgetVariables",
    "mainWindow",
    "showStatusMessage",
    "messageBox",
    "delayDisplay",
}


@pytest.fixture(scope="module")
def module_ast() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


@pytest.fixture(scope="module")
def ui_tree() -> ET.ElementTree:
    return ET.parse(UI_FILE)


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {MODULE_FILE.name}")


def _ui_widgets(tree: ET.ElementTree) -> dict[str, ET.Element]:
    return {w.get("name"): w for w in tree.iter("widget")}


def _parameter_fields(tree: ast.Module) -> dict[str, ast.expr]:
    """Annotated fields of the class decorated with @parameterNodeWrapper."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {stmt.target.id: stmt.annotation for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in the module file")


def _kind(annotation: ast.expr) -> tuple[str, str]:
    """Classify a field annotation: ('bool'|'int'|'float'|'str'|'choice'|'path'|'node'|'list', detail)."""
    text = ast.unparse(annotation)
    if text.startswith("Annotated["):
        base = ast.unparse(annotation.slice.elts[0])
        extras = [ast.unparse(e) for e in annotation.slice.elts[1:]]
        if any(e.startswith("Choice(") for e in extras):
            return "choice", base
        return _kind(annotation.slice.elts[0])
    if text in ("bool", "int", "float", "str"):
        return text, text
    if text in ("pathlib.Path", "Path"):
        return "path", text
    if text.startswith("vtkMRML"):
        return "node", text
    if text.startswith("list["):
        return "list", text
    return "other", text


# -- compiling --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [MODULE_FILE, *sorted(LIB.glob("*.py")), *sorted((MODULE / "Testing" / "Python").glob("*.py"))],
    ids=lambda p: p.name,
)
def test_python_files_compile(path):
    compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_module_file_follows_the_template(module_ast):
    names = {n.name for n in module_ast.body if isinstance(n, ast.ClassDef)}
    assert {
        "LiverKidneySeg",
        "LiverKidneySegParameterNode",
        "LiverKidneySegWidget",
        "LiverKidneySegLogic",
        "LiverKidneySegTest",
    } <= names
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert 'categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]' in source
    for attribute in ("title", "contributors", "helpText", "acknowledgementText"):
        assert f"self.parent.{attribute} =" in source
    test_class = _class(module_ast, "LiverKidneySegTest")
    tests = [f.name for f in test_class.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]
    run = next(f for f in test_class.body if isinstance(f, ast.FunctionDef) and f.name == "runTest")
    called = {n.func.attr for n in ast.walk(run) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert tests and set(tests) <= called, f"runTest must run every test method: {tests}"


# -- .ui <-> code -------------------------------------------------------------------------------------
def test_ui_is_well_formed_with_unique_names(ui_tree):
    names = [w.get("name") for w in ui_tree.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names in the .ui"
    assert ui_tree.getroot().find("widget").get("class") == "qMRMLWidget"
    declared = {c.findtext("class") for c in ui_tree.iter("customwidget")}
    used = {w.get("class") for w in ui_tree.iter("widget")}
    custom = {c for c in used if not c.startswith("Q")}
    assert custom <= declared, f"custom widgets used but not declared: {custom - declared}"


def test_every_widget_used_in_code_exists_in_the_ui(ui_tree):
    # the widget's refinement/planning part lives in LiverKidneySegGui (a mixin of the Widget)
    source = "\n".join(
        p.read_text(encoding="utf-8") for p in [MODULE_FILE, *sorted((MODULE / "LiverKidneySegGui").glob("*.py"))]
    )
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    widgets = _ui_widgets(ui_tree)
    missing = sorted(used - set(widgets))
    assert not missing, f"widgets used in the widget code but absent from the .ui: {missing}"
    assert len(used) > 20  # the check is looking at the real code


def test_mrml_widgets_get_the_scene(ui_tree):
    widgets = _ui_widgets(ui_tree)
    mrml = {
        name
        for name, w in widgets.items()
        if w.get("class", "").startswith("qMRML") and w.get("class") != "qMRMLWidget"
    }
    connected = {
        c.findtext("receiver")
        for c in ui_tree.iter("connection")
        if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrml <= connected, f"MRML widgets without setMRMLScene connection: {mrml - connected}"


def test_every_slicer_parameter_name_is_a_bindable_field(ui_tree, module_ast):
    fields = _parameter_fields(module_ast)
    bound = {}
    for widget in ui_tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = widget
    assert len(bound) >= 10
    for name, widget in bound.items():
        assert name in fields, (
            f"SlicerParameterName {name!r} (widget {widget.get('name')}) is not a parameter node field"
        )
        kind, detail = _kind(fields[name])
        cls = widget.get("class")
        assert kind in CONNECTABLE.get(cls, set()), f"{widget.get('name')} ({cls}) cannot be bound to {name}: {detail}"
        if kind == "node":
            types = [s.text for s in widget.iter("string") if (s.text or "").startswith("vtkMRML")]
            assert detail in types, f"{widget.get('name')} nodeTypes {types} do not include {detail}"


def test_structure_checkboxes_name_product_structures(ui_tree):
    from lkseg.labels import PRODUCT_LABELS

    names = set()
    for widget in ui_tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "structureName":
                names.add(prop.findtext("string"))
    assert names == set(PRODUCT_LABELS.values())
    source = MODULE_FILE.read_text(encoding="utf-8")
    listed = re.search(r"PRODUCT_STRUCTURES = \[(.*?)\]", source).group(1)
    assert set(re.findall(r'"(\w+)"', listed)) == names


# -- CMake, resources ---------------------------------------------------------------------------------
def test_every_python_file_is_listed_in_cmake():
    listed = listed_sources((MODULE / "CMakeLists.txt").read_text(encoding="utf-8"))
    shipped = python_sources()
    missing = sorted(set(shipped) - set(listed))
    stale = sorted(set(listed) - set(shipped))
    assert not missing, f"not listed in LiverKidneySeg/CMakeLists.txt (run scripts/update_cmake_sources.py): {missing}"
    assert not stale, f"listed in CMakeLists.txt but missing: {stale}"
    assert "LiverKidneySeg.py" in listed and "LiverKidneySegLib/logic.py" in listed


def test_cmake_resources_and_self_test_exist():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", text, re.S).group(1).split()
    for entry in resources:
        assert (MODULE / entry.replace("${MODULE_NAME}", "LiverKidneySeg")).is_file(), entry
    testing = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    for script in re.findall(r"(\w+\.py)", testing):
        assert (MODULE / "Testing" / "Python" / script).is_file(), script


@pytest.mark.parametrize(
    "path",
    [MODULE / "Resources" / "Icons" / "LiverKidneySeg.png", ROOT / "Resources" / "LiverKidneySeg.png"],
    ids=["module", "extension"],
)
def test_icons_are_128_pixel_pngs(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (128, 128)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    assert colours > 50  # a drawn picture, not a flat placeholder


def test_requirements_have_lower_bounds_only():
    lines = [ln.split("#")[0].strip() for ln in (MODULE / "Resources" / "requirements.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    assert reqs, "empty requirements.txt"
    for req in reqs:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*>=[0-9][0-9A-Za-z.]*", req), f"{req!r}: use 'name>=version'"
    names = {re.split(r">=", r)[0].lower() for r in reqs}
    assert "vtk" not in names, "VTK is Slicer's own and must never be pip-installed into Slicer"
    assert {"torch", "monai", "simpleitk"} <= names


# -- Qt and pip discipline ------------------------------------------------------------------------------
def _imported_modules(tree: ast.Module) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("path", sorted(LIB.glob("*.py")), ids=lambda p: p.name)
def test_library_never_uses_qt(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not ({"qt", "ctk", "PythonQt"} & _imported_modules(tree)), f"{path.name} imports Qt"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in QT_GUI_HELPERS - {"delayDisplay"}:
            pytest.fail(f"{path.name}:{node.lineno} uses the GUI helper {node.attr}")


def test_qt_is_used_only_inside_the_widget(module_ast):
    widget = _class(module_ast, "LiverKidneySegWidget")
    inside = {id(n) for n in ast.walk(widget)}
    for node in ast.walk(module_ast):
        if id(node) in inside:
            continue
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("qt", "ctk"):
            pytest.fail(f"line {node.lineno}: {node.value.id}.{node.attr} used outside the Widget")
        if isinstance(node, ast.Attribute) and node.attr in QT_GUI_HELPERS - {"delayDisplay"}:
            pytest.fail(f"line {node.lineno}: GUI helper {node.attr} used outside the Widget")


@pytest.mark.parametrize("path", [MODULE_FILE, *sorted(LIB.glob("*.py"))], ids=lambda p: p.name)
def test_nothing_is_installed_at_import(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pip_calls = {"pip_install", "pip_ensure", "ensureDependencies", "installTorch"}

    def top_level_calls(body):
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if isinstance(stmt, ast.ClassDef):
                    yield from (
                        n
                        for s in stmt.body
                        if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for n in ast.walk(s)
                    )
                continue
            yield from ast.walk(stmt)

    for node in top_level_calls(tree.body):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            assert name not in pip_calls, f"{path.name}:{node.lineno} installs packages at import"


def test_pip_is_never_called_from_a_worker_thread():
    source = (LIB / "dependencies.py").read_text(encoding="utf-8")
    assert "threading.main_thread()" in source
    for path in LIB.glob("*.py"):
        if path.name != "dependencies.py":
            assert "pip_install" not in path.read_text(encoding="utf-8"), path.name
