"""Config of where the curation stages' shard-level work runs: in the stage's own process, on Prefect's
process-pool task runner, or on a Ray cluster (prefect-ray). The outputs are the same byte for byte."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from schemas.base import StrictModel


class RunnerConfig(StrictModel):
    # Where the work runs never changes what it makes: none of this enters a stage's cache key.
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("kind", "ray_address", "workers")
    kind: Literal["local", "processes", "ray"] = Field(
        "local", description="Where the shard-level work of ingest, dedup, filters and tokenize runs. 'local': "
        "inside each stage's process (its own process pool where the stage's workers/num_proc setting asks "
        "for one); 'processes': one Prefect task per shard on Prefect's process-pool task runner, so every "
        "shard shows in the Prefect UI; 'ray': the same tasks on a Ray cluster through prefect-ray. How the "
        "work is cut into shards is the stages' own settings (ingest.workers, dedup.workers, filters.workers, "
        "tokenize.num_proc), never the runner, so every runner writes the same files.")
    ray_address: str | None = Field(
        None, description="The Ray cluster to join ('ray://head:10001', or 'auto' for the cluster this node "
        "belongs to); None starts a local Ray instance with `workers` CPUs. Only with kind 'ray'. The stage "
        "directories (workdir) must be on storage every Ray node reads and writes.")
    workers: int = Field(2, ge=1, description="Worker processes of the 'processes' runner, and the CPUs of "
                                              "a local Ray instance (kind 'ray' without ray_address).")

    @model_validator(mode="after")
    def _address_for_ray(self) -> RunnerConfig:
        if self.ray_address is not None and self.kind != "ray":
            raise ValueError(f"runner.ray_address is set but runner.kind is {self.kind!r}; set runner.kind: ray")
        return self
