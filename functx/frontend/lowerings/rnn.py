"""oneDNN's LSTM layer (aten.mkldnn_rnn_layer: what nn.LSTM runs on the CPU for float32 and
bfloat16). It has no decomposition, and the opaque fallback typed its workspace output by
its meta kernel (empty) where the real one is not, so its derivative raised. The layer is the
recurrence of ATen's LSTM cell, step by step (composites.lstm_cell, the formulas of
nn.LSTMCell), written with torch ops on the wrappers so every transform sees ordinary ops."""
from __future__ import annotations

import torch

from ...core.errors import FunctxError, user_frame_summary
from ..composites import lstm_cell
from .common import aten
from .registry import register_special

_LSTM = 2       # ideep::rnn_kind::LSTM, the only kind ATen hands oneDNN


@register_special(aten.mkldnn_rnn_layer.default)
def _mkldnn_rnn_layer(input, w_ih, w_hh, b_ih, b_hh, hx, cx, reverse, batch_sizes, mode, hidden_size,
                      num_layers, has_biases, bidirectional, batch_first, train):
    if mode != _LSTM or len(batch_sizes):
        raise FunctxError(f"functx: aten.mkldnn_rnn_layer with mode={mode} and batch_sizes={list(batch_sizes)} "
                          f"is not supported:\n{user_frame_summary()}")
    steps = input.unbind(1 if batch_first else 0)
    biases = (b_ih, b_hh) if has_biases else (None, None)
    h, c = hx.reshape(hx.shape[-2:]), cx.reshape(cx.shape[-2:])     # (1, batch, hidden) from nn.LSTM
    outs = []
    for x in (reversed(steps) if reverse else steps):
        h, c = lstm_cell(x, (h, c), w_ih, w_hh, *biases)
        outs.append(h)
    if reverse:
        outs.reverse()
    output = torch.stack(outs, 1 if batch_first else 0)
    # (the workspace: oneDNN's scratch for its own backward)
    return output, h.reshape(hx.shape), c.reshape(cx.shape), input.new_empty((0,))
