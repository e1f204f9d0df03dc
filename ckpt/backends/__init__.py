"""Ways out: each back end reads a schedule and never decides what to keep. The numpy/cupy
interpreter is ckpt/execute.py; `codegen` writes the schedule out as a standalone Python module;
`torch_apply` applies a plan to a PyTorch module as selective checkpointing (torch is optional)."""
