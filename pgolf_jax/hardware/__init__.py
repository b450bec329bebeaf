"""Hardware truth without a GPU: `run.py compile` compiles the run's own programs with XLA's GPU
compiler for H100s on any machine ("deviceless", from the CUDA PJRT plugin) and reports memory,
FLOPs, collectives and a roofline bound per device."""
