"""Scoring inside the node: the model is loaded once, and spooled films are scored in dynamic batches.

Three stages in threads, with a bounded queue between them so that decoding runs ahead of the model (as
``cxrad score`` does):

1. *gather and decode*: wait for a film, then take more until the batch is full or ``max_wait_s`` has passed
   since the first; read their headers and decode them with ``cxrad.data.load_images`` (the reader of
   ``cxrad score``, ``decode_workers`` threads);
2. *model*: ``det.explain`` (``det.score`` when no heatmap is wanted) in ``model_threads`` threads (None: one
   per core), each scoring a batch on one torch thread, as ``cxrad score`` does; the scoring graph runs in
   fixed chunks, so a film's score does not depend on the batch it came in;
3. *record*: the recorder callback (results, database, spool) of the node.

A batch that fails as a whole (a bug, not a bad file: bad files are error rows) is scored again film by film,
so one film cannot take the others down, and a film that still fails is recorded with the reason.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from cxrad.errors import ImageReadError
from cxrad.imaging import read_bytes

log = logging.getLogger("cxrad.node")
RETRY_RECORD_S = 5.0


@dataclass
class Batch:
    """Films scored together, and what each stage found."""

    entries: list  # spool entries, one per film id (duplicates are in ``duplicates``)
    duplicates: list = field(default_factory=list)
    headers: dict = field(default_factory=dict)  # film id -> instances.Header, or the reason it is unreadable
    images: object = None  # the ImageSet
    table: object = None  # the score table (one row per entry, by path)
    maps: dict = field(default_factory=dict)  # film id -> anomaly map (model size)
    inputs: dict = field(default_factory=dict)  # film id -> model input (uint8, model size)
    gathered_at: float = 0.0
    decode_s: float = 0.0
    model_s: float = 0.0


class Pipeline:
    """The scoring stages of a node. ``submit`` a spooled film; ``record(batch)`` is called for every batch;
    ``known(ids)`` names the films already recorded (they are not scored again, only dropped)."""

    def __init__(self, det, record, known, drop, batch_size: int = 16, max_wait_s: float = 0.005,
                 decode_workers: int = 1, model_threads: int | None = None, maps: bool = True):
        self.det, self.record, self.known, self.drop = det, record, known, drop
        self.batch_size, self.max_wait_s = int(batch_size), float(max_wait_s)
        self.decode_workers = max(1, int(decode_workers))
        from cxrad.serving.streaming import model_streams, on_cpu
        self.model_threads = model_streams(det, model_threads)
        self.torch_on_cpu = on_cpu(det) and hasattr(det, "scoring_graph")
        self.maps = maps
        self.intake: queue.Queue = queue.Queue()
        self._decoded: queue.Queue = queue.Queue(maxsize=self.model_threads)
        self._scored: queue.Queue = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.current_threads = 0  # the model's threads now (0 before start)
        self.busy = threading.Event()  # set while any film is between intake and the end of ``record``
        self._in_flight = 0
        self._lock = threading.Lock()

    # --------------------------------------------------------------------------------------- control
    def submit(self, entry) -> None:
        with self._lock:
            self._in_flight += 1
            self.busy.set()
        self.intake.put(entry)

    def _done(self, n: int) -> None:
        with self._lock:
            self._in_flight -= n
            if self._in_flight <= 0:
                self._in_flight = 0
                self.busy.clear()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def start(self) -> None:
        stages = [("cxrad-decode", self._decode_loop), ("cxrad-record", self._record_loop)]
        stages += [(f"cxrad-model-{i}", self._model_loop) for i in range(self.model_threads)]
        self.current_threads = self.model_threads
        for name, target in stages:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand and stop; films still queued stay in the spool for the next start."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)

    # ----------------------------------------------------------------------------------------- stages
    def _gather(self) -> list | None:
        while not self._stop.is_set():
            try:
                first = self.intake.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.batch_size:
                left = deadline - time.monotonic()
                try:
                    batch.append(self.intake.get(timeout=left) if left > 0 else self.intake.get_nowait())
                except queue.Empty:
                    break
            return batch
        return None

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _decode_loop(self) -> None:
        while True:
            entries = self._gather()
            if entries is None:
                return
            try:
                batch = self._decode(entries)
            except Exception:  # pragma: no cover - defensive: never lose the thread
                log.exception("decoding a batch failed")
                self._done(len(entries))
                continue
            if batch is None:
                continue
            if not self._put(self._decoded, batch):
                return

    def _decode(self, entries: list) -> Batch | None:
        from cxrad.data import load_images
        from cxrad.serving.node.instances import read_header

        t0 = time.perf_counter()
        unique, duplicates, seen = [], [], set()
        for e in entries:
            (duplicates if e.id in seen else unique).append(e)
            seen.add(e.id)
        recorded = self.known([e.id for e in unique])
        for e in [e for e in unique if e.id in recorded]:  # replayed after its result was committed
            self.drop(e)
        for e in duplicates:
            if e.id in recorded:
                self.drop(e)
        done = [e for e in unique if e.id in recorded] + [e for e in duplicates if e.id in recorded]
        self._done(len(done))
        unique = [e for e in unique if e.id not in recorded]
        duplicates = [e for e in duplicates if e.id not in recorded]
        if not unique:
            return None
        batch = Batch(unique, duplicates, gathered_at=time.time())
        for e in unique:
            if e.ext == "dcm":
                try:
                    batch.headers[e.id] = read_header(read_bytes(e.path))
                except ImageReadError as exc:
                    batch.headers[e.id] = str(exc)
                except Exception as exc:  # a header bug is this film's error, not the batch's
                    batch.headers[e.id] = f"unreadable DICOM header ({type(exc).__name__})"
        batch.images = load_images([str(e.path) for e in unique], self.det.prep, cache_dir=None,
                                   workers=self.decode_workers, cache_set=False)
        batch.decode_s = time.perf_counter() - t0
        return batch

    def _model_loop(self) -> None:
        if self.torch_on_cpu:
            from cxrad.serving.streaming import one_torch_thread
            one_torch_thread()
        while True:
            batch = self._get(self._decoded)
            if batch is None:
                return
            t0 = time.perf_counter()
            self._score(batch)
            batch.model_s = time.perf_counter() - t0
            if not self._put(self._scored, batch):
                return

    def _explain(self, images):
        if self.maps:
            return self.det.explain(images, pictures=("map",))
        return self.det.score(images), {}

    def _score(self, batch: Batch) -> None:
        import pandas as pd

        images = batch.images
        try:
            table, pictures = self._explain(images)
        except Exception:
            log.exception("scoring a batch of %d failed; scoring its films one by one", len(images))
            rows, pictures = [], {}
            for i in range(len(images)):
                one = images.subset([i])
                try:
                    t, p = self._explain(one)
                except Exception as exc:
                    t = one.frame.assign(score=np.nan, percentile=np.nan, anomalous=pd.NA,
                                         error=f"internal error while scoring ({type(exc).__name__})")
                    p = {}
                rows.append(t)
                for k, v in p.items():
                    pictures.setdefault(k, []).append(v[0])
            if len(images.errors):
                rows.append(images.errors.assign(score=np.nan, percentile=np.nan, anomalous=pd.NA))
            table = pd.concat(rows, ignore_index=True) if rows else images.errors
            pictures = {k: np.stack(v) for k, v in pictures.items()} if pictures else {}
            if "map" in pictures and len(pictures["map"]) != len(images):
                pictures = {}
        batch.table = table
        by_path = {str(e.path): e.id for e in batch.entries}
        if "map" in pictures:
            for i, path in enumerate(images.frame["path"]):
                batch.maps[by_path[path]] = pictures["map"][i]
                batch.inputs[by_path[path]] = np.asarray(images.images[i])

    def _record_loop(self) -> None:
        while True:
            batch = self._get(self._scored)
            if batch is None:
                return
            try:
                self.record(batch)
            except Exception:
                # the films stay in the spool; they are tried again later (a database that was away comes back)
                log.exception("recording a batch of %d failed; its films stay spooled and are retried in %.0f s",
                              len(batch.entries), RETRY_RECORD_S)
                retry = threading.Timer(RETRY_RECORD_S, lambda films=batch.entries + batch.duplicates:
                                        [self.submit(e) for e in films if e.path.exists()])
                retry.daemon = True
                retry.start()
            finally:
                self._done(len(batch.entries) + len(batch.duplicates))
