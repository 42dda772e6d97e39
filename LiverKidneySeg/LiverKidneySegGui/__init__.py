"""Qt parts of the LiverKidneySeg module's widget (the only package besides ``LiverKidneySeg.py``
that uses Qt; ``LiverKidneySegLib`` stays Qt-free and runs on slicer-core)."""

from __future__ import annotations

__all__ = ["widgetparts"]
