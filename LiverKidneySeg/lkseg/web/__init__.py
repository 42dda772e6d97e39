"""Browser front end (trame-slicer) over the Slicer module's MRML-level logic (LiverKidneySegLib)."""
