"""A CPU model actor for ndif 0.1.2, for the local test stack only.

ndif's shipped ``ModelActor`` places weights on CUDA and syncs CUDA after every
request. This subclass keeps ndif's request handling (run/execute/format_error/
upload) unchanged and only replaces the device-specific parts:

- ``load_from_disk``: load on CPU through nnsight's ``from_model_key``;
- ``to_cache`` / ``from_cache``: flag-only (there is no GPU to free);
- ``cleanup``: the same per-request reset, without ``torch.cuda.synchronize``.

Selected with ``NDIF_DEFAULT_MODEL_ACTOR_CLASS=ndif_cpu_actor.CPUModelActor``;
this folder must be on the PYTHONPATH of ``ray start`` so Ray workers import it.
It runs only in the server virtualenv (.ndif-venv), never in the project's.
"""

from __future__ import annotations

import gc
import logging
import time

import ray
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel

logger = logging.getLogger("ndif.modeling")


class CPUModelDeployment(BaseModelDeployment):
    CACHEABLE = True

    def load_from_disk(self) -> HuggingFaceModel:
        started = time.time()
        model = HuggingFaceModel.from_model_key(
            self.model_key,
            dispatch=True,
            dtype=self.dtype_name,
            **self.kwargs,
        )
        model._module.requires_grad_(False)
        model._module.eval()
        logger.info(f"Loaded {self.model_key} on CPU in {time.time() - started:.1f}s")
        return model

    async def to_cache(self) -> None:
        await self.cancel("preempted")
        self.cached = True

    def from_cache(self, gpu_mem_bytes_by_id: dict[int, int]) -> None:
        self.gpu_mem_bytes_by_id = gpu_mem_bytes_by_id
        self.cached = False

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()


@ray.remote(num_cpus=0, max_restarts=0)
class CPUModelActor(CPUModelDeployment):
    """The Ray actor the local controller deploys (one replica, on CPU)."""
