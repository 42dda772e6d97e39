"""MRML adapters and the GUI-free logic of the LiverKidneySeg Slicer module.

Everything here works with the MRML classes of ``slicer`` (the 3D Slicer application or the
``slicer-core`` wheel) and never imports Qt. The core computations live in ``lkseg``; this
package only moves data between MRML nodes and the core:

* :mod:`.volumes` — volume node <-> core ``Volume`` (exact IJK-to-RAS, oblique included)
* :mod:`.segmentations` — label map <-> segmentation node (names, colours, SNOMED terminology)
* :mod:`.markups` — point lists / ROI in RAS <-> voxel prompts
* :mod:`.tables` — result rows <-> ``vtkMRMLTableNode``
* :mod:`.surfaces` — closed surfaces, model nodes in a subject-hierarchy folder, STL/OBJ files
* :mod:`.process` — the core CLI out of process (progress lines, cancel of the process tree)
* :mod:`.autoseg`, :mod:`.refinement`, :mod:`.history`, :mod:`.logic` — the module's logic
* :mod:`.dependencies`, :mod:`.patient`, :mod:`.headless` — installs, DICOM tags, slicer-core setup

Submodules import ``slicer`` and ``vtk`` lazily, so importing this package is cheap.
"""

from __future__ import annotations

__all__ = [
    "autoseg",
    "dependencies",
    "headless",
    "history",
    "logic",
    "markups",
    "patient",
    "process",
    "refinement",
    "segmentations",
    "surfaces",
    "tables",
    "volumes",
]
