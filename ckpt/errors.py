"""Typed failures, each with the exit code the CLI turns it into (see DESIGN.md, "The command line")."""


class CkptError(Exception):
    """Base class: a failure the user should see as one line, never a traceback."""

    exit_code = 2

    def __init__(self, message, *, file=None, line=None, key=None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.key = key

    def __str__(self):
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"


class ConfigError(CkptError):
    """Bad input: a config, graph file or flag that cannot be used (exit 2)."""


class ShapeError(ConfigError):
    """Operand shapes that an op cannot take (exit 2)."""


class CheckFailed(CkptError):
    """A check ran and failed: gradient check, baseline regression (exit 1)."""

    exit_code = 1


class BudgetError(CkptError):
    """No schedule meets the memory budget (exit 3); carries the smallest feasible peak."""

    exit_code = 3

    def __init__(self, message, *, min_peak=None):
        super().__init__(message)
        self.min_peak = min_peak


class ScheduleError(CkptError):
    """A schedule step whose operands are not live: a planner bug, caught before any array is touched."""

    exit_code = 1
