"""`bnlab sweep`: a grid expanded and composed by bnlab, run on a launcher (basic, joblib,
submitit local or SLURM)."""
