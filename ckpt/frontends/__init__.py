"""Front ends: ways into ckpt's graph. YAML configs are read by ckpt.model.config; PyTorch modules
are traced by torch_import (torch is an optional extra: import it only where torch is wanted)."""
