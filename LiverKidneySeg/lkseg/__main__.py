"""``python -m lkseg`` (and ``PythonSlicer -m lkseg`` inside 3D Slicer) runs the CLI."""

from lkseg.cli.main import main

raise SystemExit(main())
