"""ckpt.torch: apply a ckpt plan to a PyTorch module.

    import ckpt.torch
    model = ckpt.torch.apply(model, "plan.json")   # written by `ckpt plan model.yaml --emit torch -o plan.json`

Nothing else in the training loop changes."""

from .backends.torch_apply import apply, measure_step  # noqa: F401
