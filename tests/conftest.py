import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

# Example configs at sizes that keep the suite fast; every dim named here exists in the config.
SMALL = {
    "seed_example": {},
    "mlp_deep": {"B": 8, "D": 16, "L": 6},
    "resnet_small": {"N": 2, "C": 4, "H": 8, "R": 1},
    "gpt_small": {"B": 2, "T": 8, "D": 16, "H": 2, "HD": 8, "V": 12, "L": 2},
    "unet_small": {"N": 2, "C": 2, "H": 8},
}


def config_path(name):
    return os.path.join(CONFIGS, name + ".yaml")


@pytest.fixture(params=sorted(SMALL))
def small_config(request):
    return request.param, config_path(request.param), SMALL[request.param]


class _Result:
    def __init__(self, code, out, err):
        self.exit_code, self.stdout, self.stderr, self.output = code, out, err, out + err


@pytest.fixture
def run_main(capsys):
    """The real entry point (ckpt.cli.main: click's usage errors as one line too), in-process."""
    def go(args):
        from ckpt.cli import main
        with pytest.raises(SystemExit) as e:
            main(args)
        out, err = capsys.readouterr()
        return _Result(e.value.code, out, err)
    return go
