"""Serve the page first, build the app behind it: what makes the page usable soon after ``lkseg web``.

Profiled start (cProfile and ``-X importtime``, see the README's web section): about 3.3 s of CPU
went into imports and set-up before the server even listened -- slicer-core's native libraries
(~2 s, mostly ``dlopen``), trame-slicer (``import vtk`` loads every VTK module, pydicom), the
Vuetify UI -- and only then did the browser start fetching and parsing its ~1.8 MB of JavaScript
(another 1.5-2 s). Now:

1. :func:`prepareServer` (before ``server.start``, light): the client modules (Vuetify,
   trame-slicer, trame-rca), the downloads route, the tab counter and a "starting" page;
2. once serving, :func:`buildApp` imports the heavy modules on a worker thread (:func:`preload`;
   the event loop keeps serving the page's files meanwhile), then builds
   :class:`~lkseg.web.app.LKSegWebApp` on the loop, whose layout replaces the starting page in the
   browser, and creates the views.

So the browser loads the page while the server imports. The page is usable when the app's state
reaches it; the models load later still, on first use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

__all__ = ["DOWNLOADS_ROUTE", "AppHolder", "buildApp", "preload", "prepareServer"]

log = logging.getLogger(__name__)

DOWNLOADS_ROUTE = "lks-downloads"


class AppHolder:
    """The app once built, and what the page did before (tabs connected, a page shown)."""

    def __init__(self):
        self.app = None
        self.clients = 0
        self.pageShown = False

    def clientsChanged(self, count: int) -> None:
        self.clients = count
        if self.app is not None:
            self.app._clientsChanged(count)


def _clientCounter(holder: AppHolder):
    from wslink.websocket import LinkProtocol

    class ClientCounter(LinkProtocol):
        """Counts the page's websocket connections (browser tabs) for the single-user warning."""

        def __init__(self):
            super().__init__()
            self._ids = set()

        def onConnect(self, request, client_id):
            self._ids.add(client_id)
            holder.clientsChanged(len(self._ids))

        def onClose(self, client_id):
            self._ids.discard(client_id)
            holder.clientsChanged(len(self._ids))

    return ClientCounter()


def downloadsDir(workDir: str | Path) -> Path:
    out = Path(workDir) / "downloads"
    out.mkdir(parents=True, exist_ok=True)
    return out


def prepareServer(server, workDir: str | Path, holder: AppHolder | None = None) -> AppHolder:
    """Before ``server.start``: what must exist when the server starts listening (client modules,
    static routes, protocols) and a starting page. Light: no slicer, VTK or Vuetify widgets."""
    from trame.ui.html import DivLayout
    from trame.widgets import html
    from trame_rca import module as rcaModule
    from trame_slicer import module as slicerModule
    from trame_vuetify import module as vuetifyModule

    holder = holder or AppHolder()
    server.enable_module(vuetifyModule, version=3)  # the app's layout (Vuetify 3)
    server.enable_module(slicerModule)
    server.enable_module(rcaModule)
    server.serve[DOWNLOADS_ROUTE] = str(downloadsDir(workDir))
    server.add_protocol_to_configure(lambda protocol: protocol.registerLinkProtocol(_clientCounter(holder)))
    server.controller.on_client_connected.add(lambda: setattr(holder, "pageShown", True))
    server.state.trame__title = "LiverKidneySeg"
    server.state.lks_start_error = ""
    with DivLayout(server) as layout:
        layout.root.style = "font-family: sans-serif; padding: 2em; color: #bbb; background: #121212; height: 100vh;"
        html.Div("{{ lks_start_error || 'LiverKidneySeg is starting...' }}", id="lks-starting")
    return holder


def preload() -> float:
    """Import what the app needs (any thread; returns seconds). Models are not loaded."""
    t0 = time.perf_counter()
    from lkseg.web.views import blockTriton, fastVtkImports

    blockTriton()
    fastVtkImports()
    import slicer  # noqa: F401
    import trame.ui.vuetify3
    import trame.widgets.vuetify3  # noqa: F401
    import trame_slicer.app.ui
    import trame_slicer.core
    import trame_slicer.rca_view  # noqa: F401

    return time.perf_counter() - t0


async def buildApp(server, holder: AppHolder, then=None, **appArgs):
    """On the running loop: :func:`preload` on a worker thread, then the app (its layout replaces
    the starting page), then its views; ``then(app)`` runs once the views are shown (open a CT)."""
    from lkseg.web.app import LKSegWebApp

    try:
        seconds = await asyncio.get_running_loop().run_in_executor(None, preload)
        t0 = time.perf_counter()
        with server.state:
            app = LKSegWebApp(server, deferViews=True, holder=holder, **appArgs)
    except Exception as exc:  # say so on the starting page; the server keeps serving it
        log.exception("the web app could not be built")
        with server.state:
            server.state.lks_start_error = f"LiverKidneySeg could not start: {type(exc).__name__}: {exc}"
        raise
    log.info("imports %.2f s (worker thread), app built in %.2f s", seconds, time.perf_counter() - t0)
    app.viewsTask = asyncio.ensure_future(app.startViews(None if then is None else (lambda: then(app))))
    return app
