"""Reading TensorBoard event files back (TFRecord framing: length, crc, payload, crc) with tensorboardX's protos."""

from __future__ import annotations

import struct
from pathlib import Path


def scalar_events(logdir: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar summary in the event files under ``logdir``."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            out.extend((v.tag, event.step, v.simple_value) for v in event.summary.value)
            pos += 12 + length + 4
    return out
