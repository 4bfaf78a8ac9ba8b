"""The synthesis grid's private Dask cluster (``spectra.synth.grid._run_dask``)."""

import numpy as np
import pytest

pytest.importorskip("dask.distributed")


def test_synthesis_cluster_never_drops_a_worker_for_missed_heartbeats(monkeypatch):
    """A worker inside one long PySME call on a busy machine misses its heartbeats; with Dask's default worker-ttl
    (5 minutes) the scheduler restarted it and threw the spectrum away (session 22). The cluster is made with no ttl:
    checked where it is made, without starting it."""
    import dask
    import dask.distributed

    from spectra.synth.grid import DASK_SETTINGS, MakerSettings, _run_dask

    assert dask.config.get("distributed.scheduler.worker-ttl") is not None  # Dask's default, outside the grid run
    seen = {}

    class MadeError(Exception):
        pass

    def cluster(*args, **kwargs):
        seen["ttl"] = dask.config.get("distributed.scheduler.worker-ttl")
        seen["kwargs"] = kwargs
        raise MadeError

    monkeypatch.setattr(dask.distributed, "LocalCluster", cluster)
    with pytest.raises(MadeError):
        next(_run_dask([(0, np.zeros(26))], 2, False, MakerSettings()))
    assert seen["ttl"] is None and DASK_SETTINGS["distributed.scheduler.worker-ttl"] is None
    assert seen["kwargs"]["n_workers"] == 2 and seen["kwargs"]["threads_per_worker"] == 1
    assert dask.config.get("distributed.scheduler.worker-ttl") is not None  # the setting does not leak
