"""A cached read-out of a chip runtime (:mod:`chipsim.runtime`) with what its graph needs of it,
and the bytes the read-out cache charges for it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from chipsim.readout import ChipReadout

#: Measured RSS of a cached age with its session over the bytes of its arrays (82 / 36, the
#: largest ratio measured; see ``ReadoutEntry.nbytes``).
SESSION_CHARGE = 2.3


@dataclass
class ReadoutEntry:
    """A cached read-out with what the graph needs of it."""

    readout: ChipReadout
    weights: dict[str, np.ndarray]  # empty once embedded in the session (it holds its own copy)
    weight_bytes: int = 0  # the weights, and the copies fed_weights holds
    #: ``inputs`` binding: the weights as the session takes them (SessionGraph.feed: some are
    #: copies of their live taps), made once per read-out and charged in weight_bytes
    fed_weights: dict[str, np.ndarray] = field(default_factory=dict)
    scales: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # per GDC mode
    feeds: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # scales + weights, per GDC mode
    session: ort.InferenceSession | None = None
    #: ``inputs`` binding of a large chip (``ChipRuntime(embed_convs=)``): its session embeds
    #: ``embedded_bytes`` of its Conv weights (popped from ``fed_weights``) and is fed the others
    partial: bool = False
    embedded_bytes: int = 0
    #: the ops its session dropped (chipsim.compiler.tile_drops; initializers binding, lean graph)
    drops: frozenset = frozenset()

    @property
    def nbytes(self) -> int:
        # A session's prepacked weights, graph copy and arena: measured RSS growth per new age
        # (initializers binding, 2000x2000 MatMul on 'pcm', batch 1 and 1024, 1-4 ages, arena on)
        # was 56-82 B per analog weight against 36 B for readout + weights + one more copy of
        # the weights, so an entry with a session is charged SESSION_CHARGE times that
        # (python -m bench.arena_rss: enable_cpu_mem_arena on and off, interleaved: off
        # saved nothing at batch 1 and was worse after the first age at batch 1024, so it stays on).
        n = self.readout.nbytes + self.weight_bytes
        if self.session is None:
            return n
        if self.partial:  # the weights stay here; the session's copies as an embedded session's
            return n + int(SESSION_CHARGE * 2 * self.embedded_bytes)
        return int(SESSION_CHARGE * (n + self.weight_bytes))
