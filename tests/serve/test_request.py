"""A request's text stream: deltas as the text grows, a tail held back while it may become a stop string, the
reply cut before a stop string, and the finish reason and usage."""

from __future__ import annotations

from jaxtune.serve.request import Decoding, ServeRequest

WORDS = {1: "Hel", 2: "lo", 3: " ##", 4: "#", 5: " end", 9: ""}


def _request(stop=(), max_tokens=10, stream=True, decoded=None):
    events = []

    def decode(ids):
        if decoded is not None:
            decoded.append(list(ids))
        return "".join(WORDS[i] for i in ids)

    r = ServeRequest([7, 7], Decoding(max_tokens=max_tokens, stop=stop), events.append, decode,
                     stop_ids=frozenset({9}), stream=stream)  # fmt: skip
    return r, events


def test_deltas_and_a_stop_token():
    r, events = _request()
    assert not r.feed([1], False) and not r.feed([2, 5], False)
    assert r.feed([9], True)
    assert [e.text for e in events if e.kind == "delta"] == ["Hel", "lo end"]
    assert events[-1].finish_reason == "stop" and events[-1].usage == {"prompt_tokens": 2, "completion_tokens": 4,
                                                                      "total_tokens": 6}  # fmt: skip


def test_a_stop_string_is_held_back_then_cut():
    r, events = _request(stop=("###",))
    r.feed([1, 2, 3], False)  # "Hello ##" may still become "Hello ###"
    assert "".join(e.text for e in events) == "Hello "
    assert r.feed([4], False)  # "Hello ###": ends before it
    assert "".join(e.text for e in events if e.kind == "delta") == "Hello " and events[-1].finish_reason == "stop"


def test_a_reply_not_streamed_is_decoded_and_sent_once_at_its_end():
    decoded = []
    r, events = _request(stream=False, decoded=decoded)
    assert not r.feed([1], False) and not r.feed([2, 5], False)
    assert events == [] and decoded == []
    assert r.feed([9], True)
    assert [(e.kind, e.text) for e in events[:-1]] == [("delta", "Hello end")] and decoded == [[1, 2, 5, 9]]
    assert events[-1].finish_reason == "stop"
    # With stop strings it is decoded at each feed to look for them, and still sent once.
    r, events = _request(stop=("###",), stream=False)
    assert not r.feed([1, 2, 3], False) and events == []
    assert r.feed([4], False) and [e.text for e in events if e.kind == "delta"] == ["Hello "]


def test_length():
    r, events = _request(max_tokens=2)
    assert r.feed([1, 2], True)
    assert events[-1].finish_reason == "length" and r.feed([5], False)  # nothing after the end
    assert sum(e.kind == "done" for e in events) == 1
