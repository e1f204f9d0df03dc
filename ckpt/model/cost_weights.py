"""Cost weights: nanoseconds per FLOP, per byte moved and per call, by op and direction;
and the cache term of the predicted step time (ckpt/simulate.py:cache_bytes).

Written by scripts/calibrate_costs.py fit --write: fitted on AMD EPYC,
numpy 2.4.6, 2026-11-26. Fixed data: a plan never depends on the clock.
Refitted 2026-11-27 (fit --only): dropout:forward, dropout:vjp, dropout_mask:forward, layernorm:forward, layernorm:vjp, layernorm_stats:forward.
Refitted 2026-11-27 (fit --only): the cache term.
"""

WEIGHTS = {
    'add:forward': (0.226832, 0.012296, 977.414),
    'add:vjp': (0.952714, 0.0619252, 0),
    'concat:vjp': (0, 0.150236, 11367.4),
    'conv2d:forward': (0.0106491, 0.0487096, 35772.3),
    'conv2d:vjp': (0.0139048, 0.0341098, 23494.4),
    'dropout:forward': (0.254457, 0, 8533.67),
    'dropout:vjp': (0.314874, 0, 4804.28),
    'dropout_mask:forward': (0.35412, 0, 26750.7),
    'gelu:forward': (0, 0.166952, 70.076),
    'gelu:vjp': (0, 0.0847991, 0),
    'gradient': (0, 0, 1192.67),
    'layernorm:forward': (0.326551, 0, 9699.18),
    'layernorm:vjp': (0.214189, 0.0596257, 8500.32),
    'layernorm_stats:forward': (0.281497, 0, 20263.7),
    'linear:forward': (0.00912899, 0.104911, 0),
    'linear:vjp': (0.00925542, 0.108996, 522.501),
    'matmul:forward': (0.0146556, 0, 2715.01),
    'matmul:vjp': (0.00398373, 0.0839146, 0),
    'mse:forward': (0.709259, 0, 54532.2),
    'mse:vjp': (0.308844, 0, 6480.21),
    'relu:forward': (0.578108, 0, 4574.55),
    'relu:vjp': (0.278324, 0, 7490.59),
    'reshape:forward': (0, 0.0346162, 1185.42),
    'reshape:vjp': (0, 0.0307483, 0),
    'scale:forward': (0.293861, 0, 586.963),
    'scale:vjp': (0.187885, 0, 1451.45),
    'softmax:forward': (0.499102, 0, 27645),
    'softmax:vjp': (0.303914, 0, 5671.99),
    'softmax_cross_entropy:forward': (0.464371, 0, 99703.5),
    'softmax_cross_entropy:vjp': (0.326926, 0, 44315.5),
    'transpose:forward': (0, 0.0859447, 1612.82),
    'transpose:vjp': (0, 0.0909247, 0),
    '*:forward': (0.010294, 0.0591526, 1357.19),
    '*:vjp': (0.0103283, 0.046112, 1022.26),
}

# (cache capacity in bytes, ns per byte read from memory rather than from the cache)
CACHE = (2097152, 0.14)
