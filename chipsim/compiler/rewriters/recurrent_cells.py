"""The cells of ``LSTM``, ``GRU`` and ``RNN`` (ONNX gate order and equations): one time step on
the W read's output ``xt`` and the state, R read on the chip (:meth:`RecurrentRewriter.r_read`),
the rest digital. Importing this module registers the three rewriters."""

from __future__ import annotations

import numpy as np

from chipsim.compiler.rewriters.recurrent import RecurrentRewriter
from chipsim.compiler.rewriters.registry import register
from chipsim.modes import LayerKind


@register
class LSTMRewriter(RecurrentRewriter):
    """i, o, f, c gates (ONNX order), optional peepholes P = [P_i, P_o, P_f] and ``input_forget``."""

    op_type = "LSTM"
    kind = LayerKind.LSTM
    gates = 4
    default_acts = ["Sigmoid", "Tanh", "Tanh"]

    def cell(self, job, dr, xt, h, c):
        o, hidden, clip, suffix = job.o, job.hidden, job.clip, dr.suffix
        f_act, g_act, h_act = dr.acts
        pre = xt
        if h is not None:
            r_matrix = np.ascontiguousarray(np.asarray(job.r_all[dr.index], np.float32).T)
            pre = o("Add", xt, self.r_read(job, h, r_matrix, f"{job.base}/R{suffix}", f"lstm/R/{dr.index}"))
        gi, go, gf, gc = o.split(pre, 4, hidden)
        pi, po, pf = dr.peep or (None, None, None)
        if pi is not None and c is not None:
            gi = o("Add", gi, o.mul(pi, c))
            gf = o("Add", gf, o.mul(pf, c))
        i = o.act(f_act, o.clip(gi, clip))
        if job.attrs.get("input_forget", 0):
            f = o("Sub", o.const(1.0), i)
        else:
            f = o.act(f_act, o.clip(gf, clip))
        g = o.act(g_act, o.clip(gc, clip))
        c_new = o.mul(i, g) if c is None else o("Add", o.mul(f, c), o.mul(i, g))
        if po is not None:
            go = o("Add", go, o.mul(po, c_new))
        out = o.act(f_act, o.clip(go, clip))
        return o.mul(out, o.act(h_act, c_new)), c_new


@register
class GRURewriter(RecurrentRewriter):
    """z, r, h gates (ONNX order); ``linear_before_reset`` chooses where R's h rows are read."""

    op_type = "GRU"
    kind = LayerKind.GRU
    gates = 3
    default_acts = ["Sigmoid", "Tanh"]

    def cell(self, job, dr, xt, h, c):
        o, hidden, clip, suffix, base = job.o, job.hidden, job.clip, dr.suffix, job.base
        f_act, g_act = dr.acts
        xz, xr, xh = o.split(xt, 3, hidden)
        r_d = np.asarray(job.r_all[dr.index], np.float32)
        lbr = int(job.attrs.get("linear_before_reset", 0))
        if h is None:  # the state is 0: no R read; the reset gate only scales R's h bias (linear_before_reset)
            z = o.act(f_act, o.clip(xz, clip))
            rh = dr.r_bias_h
            if lbr and rh is not None:
                rh = o.mul(o.act(f_act, o.clip(xr, clip)), rh)
            hh = o.act(g_act, o.clip(o.add(xh, rh), clip))
            return o.mul(o("Sub", o.const(1.0), z), hh), None
        if lbr:
            hr = self.r_read(job, h, np.ascontiguousarray(r_d.T), f"{base}/R{suffix}", f"gru/R/{dr.index}")
            hz, hrr, hh_lin = o.split(hr, 3, hidden)
            if dr.r_bias_h is not None:
                hh_lin = o("Add", hh_lin, dr.r_bias_h)
            z = o.act(f_act, o.clip(o("Add", xz, hz), clip))
            r = o.act(f_act, o.clip(o("Add", xr, hrr), clip))
            hh = o.act(g_act, o.clip(o("Add", xh, o.mul(r, hh_lin)), clip))
        else:
            hzr = self.r_read(
                job, h, np.ascontiguousarray(r_d[: 2 * hidden].T), f"{base}/R_zr{suffix}", f"gru/R_zr/{dr.index}"
            )
            hz, hrr = o.split(hzr, 2, hidden)
            z = o.act(f_act, o.clip(o("Add", xz, hz), clip))
            r = o.act(f_act, o.clip(o("Add", xr, hrr), clip))
            hh_r = self.r_read(
                job,
                o.mul(r, h),
                np.ascontiguousarray(r_d[2 * hidden :].T),
                f"{base}/R_h{suffix}",
                f"gru/R_h/{dr.index}",
            )
            hh = o.act(g_act, o.clip(o.add(xh, hh_r, dr.r_bias_h), clip))
        # H = (1 − z)·h̃ + z·H_prev
        return o("Add", o.mul(o("Sub", o.const(1.0), z), hh), o.mul(z, h)), None


@register
class RNNRewriter(RecurrentRewriter):
    op_type = "RNN"
    kind = LayerKind.RNN
    gates = 1
    default_acts = ["Tanh"]

    def cell(self, job, dr, xt, h, c):
        o, pre = job.o, xt
        if h is not None:
            r_matrix = np.ascontiguousarray(np.asarray(job.r_all[dr.index], np.float32).T)
            pre = o("Add", xt, self.r_read(job, h, r_matrix, f"{job.base}/R{dr.suffix}", f"rnn/R/{dr.index}"))
        return o.act(dr.acts[0], o.clip(pre, job.clip)), None
