"""Heartbeats: how a training process tells every host of the store it is alive.

A background thread refreshes, every few seconds, the heartbeat of the run being trained and
of the worker itself (the workers table). Store.alive reads them for another host's process;
on the same host the pid tells. Used by workers (worker.py) and by the FP8Monitor callback
(monitor.py), whose runs are trained by a user's own script.
"""

import os
import threading

HEARTBEAT_SECONDS = 5.0  # how often a run's and a worker's heartbeat_at is refreshed


class Heartbeat:
    """While the with-block runs, refresh heartbeats every few seconds from a background
    thread: of the run being trained (`run_id`, may change) and of the worker itself
    (`worker`: host, slot, pid). on_beat: called (no arguments) after each beat, in the
    heartbeat thread (the monitor looks for a fit that died there)."""

    def __init__(self, store, run_id=None, every=HEARTBEAT_SECONDS, worker=None, on_beat=None):
        self.store, self.run_id, self.every, self.worker = store, run_id, every, worker
        self.on_beat = on_beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self):
        if self.worker:
            self.store.worker_alive(*self.worker)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        if self.worker:
            self.store.worker_gone(*self.worker)

    def stop(self):
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _beat(self):
        while not self._stop.wait(self.every):
            try:
                if self.worker:
                    self.store.worker_alive(*self.worker)
                if self.run_id is not None:
                    self.store.heartbeat(self.run_id)
                if self.on_beat is not None:
                    self.on_beat()
            except Exception as e:  # a busy store now and then must not end the training
                print(f"[pid {os.getpid()}] heartbeat failed: {e}", flush=True)
