"""Cost weights: nanoseconds per FLOP, per byte moved and per call, by op and direction.

Written by scripts/calibrate_costs.py fit --write: fitted on AMD EPYC,
numpy 2.4.6, 2026-11-26. Fixed data: a plan never depends on the clock.
"""

WEIGHTS = {
    'add:forward': (0.32166, 0, 4400.75),
    'add:vjp': (0.686699, 0, 0),
    'conv2d:forward': (0, 3.36582, 0),
    'conv2d:vjp': (0.0325, 2.94669, 0),
    'dropout:forward': (0, 0.151267, 0),
    'dropout:vjp': (0, 0.0440504, 40088.5),
    'gelu:forward': (0.654805, 0, 0),
    'gelu:vjp': (0.364234, 0, 0),
    'gradient': (0, 0.157397, 0),
    'layernorm:forward': (0.359747, 0, 23594.8),
    'layernorm:vjp': (0, 0.097148, 16401.7),
    'linear:forward': (0.0103203, 0.0564051, 7269.9),
    'linear:vjp': (0.0104748, 0.0562825, 9467.73),
    'matmul:forward': (0.0265352, 0, 0),
    'matmul:vjp': (0, 0.0475287, 11637.2),
    'relu:forward': (2.07919, 0, 0),
    'relu:vjp': (0.179057, 0, 0),
    'reshape:forward': (0, 0.0237754, 4252.98),
    'reshape:vjp': (0, 0, 0),
    'scale:forward': (1.87836, 0, 0),
    'scale:vjp': (0, 0, 0),
    'softmax:forward': (0.908998, 0, 23059.9),
    'softmax:vjp': (0.184477, 0, 42598.9),
    'transpose:forward': (0, 0.0773424, 5979.67),
    'transpose:vjp': (0, 0.0101909, 16279.4),
    '*:forward': (0.00853187, 0.161899, 29442.4),
    '*:vjp': (0.0110694, 0.072003, 31749.1),
}
