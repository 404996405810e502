"""Headless Streamlit viewers: websocket clients that speak the browser's protocol.

Each client opens `/_stcore/stream` as the browser does, asks for one page, and then does
what the browser does for `st.fragment(run_every=...)`: when the server sends an
`auto_rerun` message it asks for that fragment again at that interval (at once; when a full
run of the page ends, timers of fragments it did not register stop; `stop_auto_rerun` stops
one). It reports, like the browser's message cache, the hashes of the cacheable messages it
already holds, so unchanged charts come back as references. It renders nothing: what it costs
the server is what a viewer on another machine costs.

It records, per fragment, when each fragment run's first message arrived and which element
types the fragment draws: the run cards are the fragment with a progress bar, the charts the
one with Plotly charts.
"""

import asyncio
import time
from urllib.parse import urlparse

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ClientState_pb2 import ClientState
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetStates


class Viewer:
    """One page session; `refreshes[fragment_id]` = arrival times of that fragment's runs."""

    def __init__(self, url: str, page: str, query: str):
        parsed = urlparse(url)
        self.ws_url = f"ws://{parsed.netloc}/_stcore/stream"
        self.origin = f"{parsed.scheme}://{parsed.netloc}"
        self.page, self.query = page, query
        self.page_script_hash = ""
        self.cached_hashes: set[str] = set()
        self.intervals: dict[str, float] = {}  # fragment id → auto-rerun interval (s)
        self.refreshes: dict[str, list[float]] = {}
        self.contents: dict[str, set[str]] = {}  # fragment id → element types it draws
        self.current_fragment = None  # the fragment whose run's messages are arriving
        self.page_loaded = asyncio.Event()
        self.bytes_received = 0
        self._timers: dict[str, asyncio.Task] = {}
        self._registered: dict[str, float] = {}  # auto-reruns asked for by the current run
        self._ws = None

    def _rerun(self, fragment_id: str = "") -> bytes:
        state = ClientState(
            query_string=self.query,
            widget_states=WidgetStates(),
            page_script_hash=self.page_script_hash,
            page_name="" if self.page_script_hash else self.page,
            fragment_id=fragment_id,
            is_auto_rerun=bool(fragment_id),
            cached_message_hashes=sorted(self.cached_hashes),
        )
        return BackMsg(rerun_script=state).SerializeToString()

    async def _auto_rerun(self, ws, fragment_id: str, interval: float):
        while True:
            await asyncio.sleep(interval)
            await ws.send(self._rerun(fragment_id))

    def _received(self, msg: ForwardMsg, now: float):
        kind = msg.WhichOneof("type")
        if msg.metadata.cacheable and msg.hash:
            self.cached_hashes.add(msg.hash)
        if kind == "new_session":
            self.page_script_hash = msg.new_session.page_script_hash
            if not msg.metadata.run.fragment_ids:  # a full run starts
                self._registered = {}
        elif kind == "auto_rerun":  # applied at once, as the browser does
            self._registered[msg.auto_rerun.fragment_id] = msg.auto_rerun.interval
            self._set_timer(msg.auto_rerun.fragment_id, msg.auto_rerun.interval)
        elif kind == "stop_auto_rerun":
            for fragment in msg.stop_auto_rerun.fragment_ids:
                self._set_timer(fragment, None)
        elif kind == "delta" and msg.delta.fragment_id:
            fragment = msg.delta.fragment_id
            if fragment != self.current_fragment:  # the first message of this fragment run
                self.current_fragment = fragment
                self.refreshes.setdefault(fragment, []).append(now)
            if msg.delta.WhichOneof("type") == "new_element":
                element = msg.delta.new_element.WhichOneof("type")
                self.contents.setdefault(fragment, set()).add(element)
        elif kind == "script_finished":
            self.current_fragment = None
            if msg.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY:
                # A full run ended: the fragments it registered are the page's timers now.
                for fragment in set(self.intervals) - set(self._registered):
                    self._set_timer(fragment, None)
                self.page_loaded.set()

    def _set_timer(self, fragment: str, interval):
        if self.intervals.get(fragment) == interval:
            return
        if fragment in self._timers:
            self._timers.pop(fragment).cancel()
        self.intervals.pop(fragment, None)
        if interval:
            self.intervals[fragment] = interval
            self._timers[fragment] = asyncio.ensure_future(
                self._auto_rerun(self._ws, fragment, interval)
            )

    async def watch(self, until: asyncio.Event):
        import websockets

        async with websockets.connect(
            self.ws_url, subprotocols=["streamlit"], origin=self.origin, max_size=None
        ) as ws:
            self._ws = ws
            await ws.send(self._rerun())
            receiver = asyncio.ensure_future(self._receive(ws))
            await until.wait()
            receiver.cancel()
            for timer in self._timers.values():
                timer.cancel()

    async def _receive(self, ws):
        async for raw in ws:
            self.bytes_received += len(raw)
            msg = ForwardMsg()
            msg.ParseFromString(raw)
            self._received(msg, time.time())


async def watch(url: str, page: str, query: str, viewers: int, seconds: float, on_window):
    """`viewers` sessions on `page`; once every page has loaded, `on_window(start)` then,
    `seconds` later, `on_window(end)`. Returns the viewers with their records."""
    clients = [Viewer(url, page, query) for _ in range(viewers)]
    done = asyncio.Event()
    tasks = [asyncio.ensure_future(c.watch(done)) for c in clients]
    await asyncio.wait_for(asyncio.gather(*(c.page_loaded.wait() for c in clients)), 240)
    await asyncio.sleep(3)  # let every fragment start its timer
    on_window("start")
    await asyncio.sleep(seconds)
    on_window("end")
    done.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return clients


def refresh_intervals(clients, start: float, end: float, element: str) -> list[float]:
    """Gaps between consecutive runs, inside [start, end], of the fragments that draw
    `element` (e.g. "progress" for the run cards, "plotly_chart" for the charts)."""
    gaps = []
    for client in clients:
        for fragment, times in client.refreshes.items():
            if element in client.contents.get(fragment, ()):
                inside = [t for t in times if start <= t <= end]
                gaps.extend(b - a for a, b in zip(inside, inside[1:]))
    return gaps
