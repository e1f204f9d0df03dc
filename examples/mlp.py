"""configs/mlp_deep.yaml written as Python: L blocks of linear + relu, then a regression loss.

    ckpt run examples/mlp.py --set L=8 --strategy sqrt-n
    ckpt compile examples/mlp.py --set B=4 --set D=16 -o step.py

The loop unrolls while tracing; each `ckpt.param` declares one layer's parameters.
"""

import ckpt


@ckpt.traced(dims={"B": 256, "D": 512, "L": 32},
             inputs={"x": {"shape": ["B", "D"], "init": "normal"},
                     "y": {"shape": ["B", "D"], "init": "normal"}})
def mlp(x, y, *, D, L):
    h = x
    for i in range(L):
        W = ckpt.param(f"W{i}", (D, D), init="xavier", scale=1.4)
        b = ckpt.param(f"b{i}", (D,), init="zeros")
        h = ckpt.relu(ckpt.linear(h, W, b))
    return ckpt.mse(h, y)
