"""Batch jobs (`vital batch`): many targets in memory-sized, resumable batches, here or on Ray; sharded mining."""

from vital.jobs.mining_job import run_mining
from vital.jobs.runner import plan, run_job
from vital.jobs.spec import Job, MineJob, ModelSpec, References, job_from_dict, read_job_file

__all__ = ["Job", "MineJob", "ModelSpec", "References", "job_from_dict", "plan",
           "read_job_file", "run_job", "run_mining"]
