"""Ways out: each back end reads a schedule and never decides what to keep. The interpreter is
ckpt/execute.py; `codegen` writes the schedule out as a standalone Python module."""
