"""Sweeps: many (model, checkpoint) pairs through the experiment scripts, locally or on SLURM.

* :mod:`.plan`: the plan file (TOML): models, checkpoints, stages, script settings, resources;
* :mod:`.jobs`: one job per stage and (model, checkpoint), plus the aggregation jobs, and the
  check that a job's outputs already exist with matching metadata;
* :mod:`.manifest`: every job's state, time and peak memory, written atomically;
* :mod:`.execute`: one job = one ``python src/<script>.py ...`` process (its peak memory measured);
* :mod:`.scheduler`: runs the jobs in dependency order on a backend (local processes or submitit);
* :mod:`.submitit_backend`: what a SLURM worker runs, sbatch parameters, submitit's local executor;
* :mod:`.slurm_backend`, :mod:`.slurm_queue`: SLURM jobs followed through squeue/sacct (re-attach
  after a restart, requeue and preemption, cancellation, clusters without accounting).
"""
