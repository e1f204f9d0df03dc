"""Ways in: each front end records a model into the one graph (ckpt/model) and carries no
derivative rules of its own. YAML is ckpt/model/config.py; `python` traces a Python function;
`torch_import` traces a PyTorch module (torch is an optional extra: import it only where wanted)."""
