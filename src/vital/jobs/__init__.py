"""Batch jobs: thousands of targets in memory-sized, resumable batches, in this process or as Ray tasks, and
mining in shards merged into one store. `vital batch` on the command line (`vital.cli.batch`)."""

from vital.jobs.mining_job import run_mining
from vital.jobs.runner import plan, run_job
from vital.jobs.spec import Job, MineJob, ModelSpec, References, job_from_dict, read_job_file

__all__ = ["Job", "MineJob", "ModelSpec", "References", "job_from_dict", "plan",
           "read_job_file", "run_job", "run_mining"]
