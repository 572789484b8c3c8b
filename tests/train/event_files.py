"""Reading TensorBoard event files back (TFRecord framing: length, crc, payload, crc) with tensorboardX's protos."""

from __future__ import annotations

import struct
from pathlib import Path


def scalar_events(logdir: Path, purge: bool = False) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar summary in the event files under ``logdir``, in write order.

    purge: apply TensorBoard's own rule for restarted writers: a SessionLog START event at step s (what
    tensorboardX writes for ``purge_step=s``) discards the events read so far whose step is s or later.
    """
    from tensorboardX.proto import event_pb2

    def events(path: Path) -> list:
        data, pos, found = path.read_bytes(), 0, []
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            found.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
        return found

    out: list[tuple[str, int, float]] = []
    files = [events(p) for p in logdir.rglob("events.out.tfevents.*")]
    for file_events in sorted((f for f in files if f), key=lambda f: f[0].wall_time):  # in the order written
        for event in file_events:
            if purge and event.HasField("session_log") and event.session_log.status == event.session_log.START:
                out = [e for e in out if e[1] < event.step]
            out.extend((v.tag, event.step, v.simple_value) for v in event.summary.value)
    return out
