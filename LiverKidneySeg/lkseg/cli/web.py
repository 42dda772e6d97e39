"""``lkseg web [CT] [--port N] [--host H] [--data-root DIR] [--demo]``: the browser front end.

Serves the single-page app (:mod:`lkseg.web.app`, trame-slicer) on 127.0.0.1 by default. Any other
interface needs an access token (generated and printed when not given with ``--token``). The page
may open only files under ``--data-root`` (default: the folder of the CT given, else the current
folder). Models load lazily: the page is interactive before any model is read.

With a CT (file or DICOM folder) it is opened at start; ``--demo`` generates a small phantom
instead (into the work folder) and opens it; with neither, the page starts empty.

Prints ``LKSEG-WEB-READY http://HOST:PORT/`` once serving (after ``LKSEG-WEB-TOKEN <token>``
when a token is required). Needs the ``web`` extra (``pip install liverkidneyseg[web]``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

from lkseg.errors import InputError

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser(
        "web",
        help="serve the browser front end (trame-slicer; needs the 'web' extra)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", help="CT to open at start (NIfTI/NRRD/MHA file or DICOM folder)")
    p.add_argument("--port", type=int, default=8080, help="port (0 = any free port; default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; others require a token)")
    p.add_argument("--token", default=None, help="access token (default: none on 127.0.0.1, generated otherwise)")
    p.add_argument("--data-root", default=None, help="folder the page may open files from")
    p.add_argument("--work-dir", default=None, help="folder for uploads, exports, reports (default: a temp folder)")
    p.add_argument("--demo", action="store_true", help="open a small generated phantom at start")
    p.add_argument(
        "--prefetch",
        type=int,
        default=0,
        help="slices whose prompt-model embeddings are precomputed on each side after a "
        "correction (default 0: fastest next click on a 2-core server; 2 on a larger one)",
    )
    p.add_argument("--series", default=None, help="SeriesInstanceUID when the DICOM folder holds several")
    p.set_defaults(func=run)


def _demoPhantom(workDir: Path) -> Path:
    from lkseg.phantom import PhantomConfig, generate_phantom, write_phantom

    folder = workDir / "demo-phantom"
    if not (folder / "ct.nii.gz").exists():
        write_phantom(generate_phantom(PhantomConfig(size_ijk=(96, 96, 40), spacing=(3.5, 3.5, 5.0))), folder)
    return folder / "ct.nii.gz"


def run(args) -> int:
    from lkseg.web.security import install_origin_guard, install_token_guard, resolve_bind

    bind = resolve_bind(args.host, args.port, args.token)
    try:
        from trame.app import get_server
    except ImportError as exc:
        raise InputError(f"the web front end needs the 'web' extra (pip install liverkidneyseg[web]): {exc}") from exc
    workDir = Path(args.work_dir or tempfile.mkdtemp(prefix="lkseg-web-")).resolve()
    inputPath = Path(args.input).expanduser().resolve() if args.input else None
    if inputPath is not None and not inputPath.exists():
        raise InputError(f"{args.input}: no such file or folder")
    if args.demo and inputPath is None:
        inputPath = _demoPhantom(workDir)
    if args.data_root:
        dataRoot = Path(args.data_root).expanduser().resolve()
    elif inputPath is not None:
        dataRoot = inputPath if inputPath.is_dir() else inputPath.parent
    else:
        dataRoot = Path.cwd().resolve()
    if not dataRoot.is_dir():
        raise InputError(f"--data-root {dataRoot}: not a folder")
    if inputPath is not None and dataRoot != inputPath and dataRoot not in inputPath.parents:
        raise InputError(f"{inputPath} is outside the data folder {dataRoot}")

    os.environ.setdefault("TRAME_DISABLE_V3_WARNING", "1")
    for name in ("trame_server", "trame_client", "trame_rca", "wslink", "trame_slicer", "aiohttp"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    server = get_server("lkseg-web", client_type="vue3")
    install_token_guard(server, bind.token)
    install_origin_guard(server, bind.host)

    from lkseg.web.startup import buildApp, prepareServer

    holder = prepareServer(server, workDir)  # the page is served first; the app is built behind it
    relative = None if inputPath is None else ("" if inputPath == dataRoot else str(inputPath.relative_to(dataRoot)))

    def opener(app):
        if relative is not None:
            app._guard(app._open_path, relative, args.series)

    def ready(**_):
        shownHost = "127.0.0.1" if bind.loopback else bind.host
        if bind.token:
            print(f"LKSEG-WEB-TOKEN {bind.token}", flush=True)
        print(f"LKSEG-WEB-READY http://{shownHost}:{server.port}/", flush=True)
        holder.buildTask = asyncio.ensure_future(
            buildApp(server, holder, opener, dataRoot=dataRoot, workDir=workDir, prefetch=max(0, args.prefetch))
        )

    server.controller.on_server_ready.add(ready)
    server.start(
        host=bind.host, port=bind.port, open_browser=False, show_connection_info=False, disable_logging=True, timeout=0
    )
    if holder.app is not None:
        holder.app.session.cleanup()
    return 0


if __name__ == "__main__":  # pragma: no cover
    from lkseg.cli.main import main

    sys.exit(main(["web", *sys.argv[1:]]))
