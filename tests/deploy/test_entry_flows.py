"""The orchestration pieces of the entry flows against a real (temporary) Prefect server: the new-dataset
announcement and the one-training-per-GPU concurrency slot."""
import asyncio

import pytest
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.testing.utilities import prefect_test_harness
from prefect.variables import Variable

from flows.deployments import GPU_LIMIT, announce_dataset, dataset_digest, gpu_slot, variable_name


@pytest.fixture(scope="module")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=180):
        yield


def _set_gpu_limit(limit: int | None) -> None:
    async def go() -> None:
        async with get_client() as client:
            if limit is None:
                await client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
            else:
                await client.upsert_global_concurrency_limit_by_name(GPU_LIMIT, limit)
    asyncio.run(go())


def test_announces_only_a_new_dataset_digest(prefect_server):
    first = {"train": "aaa", "eval": "bbb"}
    assert announce_dataset("cfg-a", first, "configs/sample.yaml", ["train.max_steps=6"]) is True
    assert Variable.get(variable_name("cfg-a")) == dataset_digest(first)
    assert announce_dataset("cfg-a", first, "configs/sample.yaml", []) is False  # unchanged: no training
    assert announce_dataset("cfg-b", first, "configs/sample.yaml", []) is True  # digests are kept per config
    changed = {"train": "aaa", "eval": "ccc"}
    assert announce_dataset("cfg-a", changed, "configs/sample.yaml", []) is True
    assert Variable.get(variable_name("cfg-a")) == dataset_digest(changed)


def test_gpu_slot_admits_one_training_per_gpu(prefect_server):
    _set_gpu_limit(1)
    try:
        with gpu_slot():
            # A second training on the same one-GPU node has to wait; here it gives up after its timeout.
            with pytest.raises(TimeoutError):
                with concurrency(GPU_LIMIT, occupy=1, timeout_seconds=2, strict=True):
                    pass
        with concurrency(GPU_LIMIT, occupy=1, timeout_seconds=10, strict=True):  # the slot was released
            pass
        _set_gpu_limit(2)
        with gpu_slot(), gpu_slot(timeout_seconds=10):  # two GPUs: two trainings at once
            pass
    finally:
        _set_gpu_limit(None)


def test_gpu_slot_is_a_no_op_without_the_limit(prefect_server):
    with gpu_slot(timeout_seconds=5):  # the embedded default (`peftpipe run`) has no `gpu` limit
        pass


def test_a_training_on_every_gpu_of_the_node_takes_every_slot(prefect_server):
    _set_gpu_limit(2)  # a 2-GPU node; DDP/FSDP over both GPUs holds both slots
    try:
        with gpu_slot(occupy=2):
            with pytest.raises(TimeoutError):
                with concurrency(GPU_LIMIT, occupy=1, timeout_seconds=2, strict=True):
                    pass
    finally:
        _set_gpu_limit(None)
