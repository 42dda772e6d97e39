"""Result rows <-> ``vtkMRMLTableNode`` (no Qt).

Rows are dicts column -> value (str, int, float, bool or None). Column types follow the values:
integers and booleans become ``vtkIntArray`` (bool as 0/1 is documented by the column
description), floats ``vtkDoubleArray`` (None as NaN), everything else ``vtkStringArray``
(None as ""). Units (``"mL"``, ``"mm"``) are stored as the table's column unit labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["rowsFromTable", "tableFromRows"]


def _columnKind(values: list) -> str:
    present = [v for v in values if v is not None]
    if (
        present
        and all(isinstance(v, (bool, int)) and not isinstance(v, float) for v in present)
        and len(present) == len(values)
    ):
        return "int"
    if present and all(isinstance(v, (bool, int, float)) for v in present):
        return "double"
    return "string"


def tableFromRows(
    rows: Sequence[Mapping[str, object]],
    tableNode=None,
    *,
    scene=None,
    name: str = "LiverKidneySeg results",
    units: Mapping[str, str] | None = None,
    descriptions: Mapping[str, str] | None = None,
):
    """Fill a table node with ``rows`` (created when ``tableNode`` is None); returns the node.

    The column order is the order in which keys first appear. The table is cleared first.
    """
    import slicer
    import vtk

    if tableNode is None:
        scene = scene or slicer.mrmlScene
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    table = vtk.vtkTable()
    for column in columns:
        values = [row.get(column) for row in rows]
        kind = _columnKind(values)
        if kind == "int":
            array = vtk.vtkIntArray()
            for value in values:
                array.InsertNextValue(int(value))
        elif kind == "double":
            array = vtk.vtkDoubleArray()
            for value in values:
                array.InsertNextValue(math.nan if value is None else float(value))
        else:
            array = vtk.vtkStringArray()
            for value in values:
                array.InsertNextValue("" if value is None else str(value))
        array.SetName(column)
        table.AddColumn(array)
    wasModifying = tableNode.StartModify()
    oldTable = tableNode.GetTable()
    for index in range(oldTable.GetNumberOfColumns() if oldTable is not None else 0):
        tableNode.RemoveAllColumnProperties(oldTable.GetColumnName(index))
    tableNode.SetAndObserveTable(table)
    for column in columns:
        if units and column in units:
            tableNode.SetColumnUnitLabel(column, units[column])
        if descriptions and column in descriptions:
            tableNode.SetColumnDescription(column, descriptions[column])
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    tableNode.EndModify(wasModifying)
    return tableNode


def rowsFromTable(tableNode) -> list[dict]:
    """Read a table node back as a list of dicts (ints, floats or strings per column type)."""
    table = tableNode.GetTable()
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for array in columns:
            if array.IsA("vtkStringArray"):
                row[array.GetName()] = array.GetValue(r)
            elif array.IsA("vtkIntArray") or array.IsA("vtkLongLongArray"):
                row[array.GetName()] = int(array.GetValue(r))
            else:
                row[array.GetName()] = float(array.GetValue(r))
        rows.append(row)
    return rows
