"""TensorBoard event files written through etils.epath, for workdirs in a bucket.

clu's default writer goes through `tf.summary`, i.e. TensorFlow's own file system, whose `gs://`
reaches only storage.googleapis.com (no emulator or endpoint variable) and which appends to one
open file. Objects cannot be appended to, so this writer buffers the records and each `flush()`
writes a new object `events.out.tfevents.<time>.<host>.<pid>.<n>` holding those since the last
one, the TFRecord framing of tensorboard's own RecordWriter; TensorBoard reads a folder's event
files in name order as one stream. Local workdirs keep clu's writer (m2e_jax/train.py).
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from clu.metric_writers import interface
from etils import epath
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.histogram import summary as histogram_summary
from tensorboard.plugins.text import summary as text_summary
from tensorboard.summary.writer.record_writer import RecordWriter


class EventObjectWriter(interface.MetricWriter):
    """clu MetricWriter of scalars, images, texts, histograms and hparams into `logdir`'s event files.

    Buffers events; `flush()` (also every `flush_every_s` seconds of writes, and `close()`) writes
    them as one new event file. Videos and audio are not written (the trainer logs neither).
    """

    def __init__(self, logdir: str | os.PathLike, flush_every_s: float = 60.0):
        self.logdir = epath.Path(logdir)
        self.flush_every_s = flush_every_s
        self._stem = f"events.out.tfevents.{{:010d}}.{socket.gethostname()}.{os.getpid()}.{{}}"
        self._events: list[bytes] = []
        self._files = 0
        self._last_flush = time.time()

    def _add(self, step: int | None, values: list[summary_pb2.Summary.Value]) -> None:
        event = event_pb2.Event(wall_time=time.time(), summary=summary_pb2.Summary(value=values))
        if step is not None:
            event.step = int(step)
        self._events.append(event.SerializeToString())
        if time.time() - self._last_flush > self.flush_every_s:
            self.flush()

    def write_summaries(self, step: int, values: Mapping[str, Any], metadata=None) -> None:
        self.write_scalars(step, {k: float(np.asarray(v)) for k, v in values.items()})

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        """images: uint8 [N, H, W, C] (C 1 or 3) per key; one image summary per picture, tagged
        `key/i` when N > 1 as clu's TF writer does."""
        values = []
        for key, batch in images.items():
            batch = np.asarray(batch)
            for i, picture in enumerate(batch):
                png = io.BytesIO()
                Image.fromarray(picture.squeeze(-1) if picture.shape[-1] == 1 else picture).save(png, "PNG")
                image = summary_pb2.Summary.Image(height=picture.shape[0], width=picture.shape[1],
                                                  colorspace=picture.shape[-1],
                                                  encoded_image_string=png.getvalue())
                tag = key if len(batch) == 1 else f"{key}/{i}"
                values.append(summary_pb2.Summary.Value(tag=tag, image=image))
        self._add(step, values)

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        self._add(step, [v for k, t in texts.items() for v in text_summary.pb(k, t).value])

    def write_histograms(self, step: int, arrays: Mapping[str, Any], num_buckets=None) -> None:
        buckets = num_buckets or {}
        self._add(step, [v for k, a in arrays.items()
                         for v in histogram_summary.pb(k, np.asarray(a), buckets.get(k)).value])

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.write_texts(0, {"hparams": json.dumps(dict(hparams), default=str, sort_keys=True)})

    def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
        raise NotImplementedError("EventObjectWriter: videos are not written to bucket workdirs")

    def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
        raise NotImplementedError("EventObjectWriter: audio is not written to bucket workdirs")

    def flush(self) -> None:
        """Writes the buffered events as one new event file (nothing when there are none)."""
        self._last_flush = time.time()
        if not self._events:
            return
        buffer = io.BytesIO()
        records = RecordWriter(buffer)
        header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
        records.write(header.SerializeToString())
        for event in self._events:
            records.write(event)
        self.logdir.mkdir(parents=True, exist_ok=True)
        (self.logdir / self._stem.format(int(time.time()), self._files)).write_bytes(buffer.getvalue())
        self._files += 1
        self._events = []

    def close(self) -> None:
        self.flush()
