"""Everything that talks to Slurm or submitit: job states, sbatch parameters, job adapters, launch, status."""
