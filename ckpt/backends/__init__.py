"""Back ends: ways out of ckpt. The numpy/cupy interpreter is ckpt.execute; torch_apply applies a
plan to a PyTorch module as selective checkpointing (torch is an optional extra)."""
