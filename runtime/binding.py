"""Flow and summary on the execution device with ONNX Runtime IO binding, buffers allocated once.

Per call of B spectra x S samples the host uploads the latent draws z [B, S, D] and the per-spectrum
projections [B, K] into device buffers, the hoisted flow writes x [B, S, D] and log_jac_det [B, S] into device
buffers, and the summary graph reads those buffers where they are and writes map [B, D], quantiles [B, Q, D]
and n_valid [B] into host buffers: only the ~80 summary numbers per spectrum come back. On the CPU
provider the same code runs with host buffers (then the summary may instead be numpy's, see
``runtime.sampler``).

Buffers and bindings are made once per (thread, B, S) and reused, which is also what CUDA graphs need: with
``fixed_batch`` every call is padded to the same B so that one captured graph replays for every call.
Thread-local, so several tasks of one worker may share the sessions (ONNX Runtime sessions are thread-safe;
bindings and buffers are not shared).
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["BoundFlow"]


class _Buffers:
    def __init__(self, flow, summary, b: int, s: int, d: int, k: int, q: int, device: str, device_id: int):
        from onnxruntime import OrtValue

        def on_device(shape, dtype=np.float32):
            return OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, device, device_id)

        def on_host(shape, dtype):
            return OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, "cpu", 0)

        self.z, self.proj = on_device((b, s, d)), on_device((b, k))
        self.x, self.log_det = on_device((b, s, d)), on_device((b, s))
        self.flow = flow.io_binding()
        self.flow.bind_ortvalue_input("z", self.z)
        self.flow.bind_ortvalue_input("cond_proj", self.proj)
        self.flow.bind_ortvalue_output("x", self.x)
        self.flow.bind_ortvalue_output("log_jac_det", self.log_det)
        self.summary = None
        if summary is not None:
            self.map, self.quantiles = on_host((b, d), np.float64), on_host((b, q, d), np.float64)
            self.n_valid = on_host((b,), np.int64)
            self.summary = summary.io_binding()
            self.summary.bind_ortvalue_input("x", self.x)
            self.summary.bind_ortvalue_input("log_jac_det", self.log_det)
            self.summary.bind_ortvalue_input("z", self.z)
            self.summary.bind_ortvalue_output("map", self.map)
            self.summary.bind_ortvalue_output("quantiles", self.quantiles)
            self.summary.bind_ortvalue_output("n_valid", self.n_valid)


class BoundFlow:
    """``hoisted_flow`` (+ ``posterior_summary``) sessions with device-resident intermediate buffers.

    Arguments:
        flow, summary: ONNX Runtime sessions (``summary`` may be None: then only x and log_jac_det come back).
        device: ``cpu`` or ``cuda`` (where the buffers live); device_id for CUDA.
        fixed_batch: pad every call to this many spectra (CUDA graphs replay one shape only); 0 = no padding.
    """

    def __init__(self, flow, summary, n_params: int, proj_width: int, n_quantiles: int, device: str = "cpu",
                 device_id: int = 0, fixed_batch: int = 0):
        self.flow_session, self.summary_session = flow, summary
        self.d, self.k, self.q = n_params, proj_width, n_quantiles
        self.device, self.device_id, self.fixed_batch = device, device_id, fixed_batch
        self._local = threading.local()

    def _buffers(self, b: int, s: int) -> _Buffers:
        cache = self._local.__dict__.setdefault("buffers", {})
        if (b, s) not in cache:
            cache[(b, s)] = _Buffers(self.flow_session, self.summary_session, b, s, self.d, self.k, self.q,
                                     self.device, self.device_id)
        return cache[(b, s)]

    def _upload(self, z: np.ndarray, proj: np.ndarray) -> tuple[_Buffers, int]:
        b, s, _ = z.shape
        if self.fixed_batch:
            if b > self.fixed_batch:
                raise ValueError(f"{b} spectra in one call; this binding is fixed at {self.fixed_batch}")
            if b < self.fixed_batch:  # pad with copies of the first spectrum; their results are dropped
                pad = self.fixed_batch - b
                z = np.concatenate([z, np.repeat(z[:1], pad, axis=0)])
                proj = np.concatenate([proj, np.repeat(proj[:1], pad, axis=0)])
        buffers = self._buffers(z.shape[0], s)
        buffers.z.update_inplace(np.ascontiguousarray(z, dtype=np.float32))
        buffers.proj.update_inplace(np.ascontiguousarray(proj, dtype=np.float32))
        return buffers, b

    def flow(self, z: np.ndarray, proj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x [B, S, D] and log_jac_det [B, S] on the host (for the numpy summary and for checks)."""
        buffers, b = self._upload(z, proj)
        self.flow_session.run_with_iobinding(buffers.flow)
        return buffers.x.numpy()[:b].copy(), buffers.log_det.numpy()[:b].copy()

    def summary(self, z: np.ndarray, proj: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """map [B, D], quantiles [B, Q, D], n_valid [B]: flow and summary on the device, summaries copied back."""
        if self.summary_session is None:
            raise ValueError("this binding has no summary graph")
        buffers, b = self._upload(z, proj)
        self.flow_session.run_with_iobinding(buffers.flow)
        self.summary_session.run_with_iobinding(buffers.summary)
        return (buffers.map.numpy()[:b].copy(), buffers.quantiles.numpy()[:b].copy(),
                buffers.n_valid.numpy()[:b].copy())
