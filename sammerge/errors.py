"""Error types. Every message is one line that names the file, key or parameter and the problem."""


class SammergeError(Exception):
    """Base class of every error sammerge raises on bad input."""


class DataError(SammergeError):
    """The benchmark data is missing, corrupt or inconsistent."""


class CheckpointError(SammergeError):
    """A checkpoint file is missing, unreadable, corrupt, mismatched or non-finite."""


class ConfigError(SammergeError):
    """A configuration (zoo manifest, merge config, preset, parameter) is invalid."""


class ZooError(SammergeError):
    """A model zoo directory is missing, incomplete or fails verification."""


class MergeError(SammergeError):
    """A merge cannot be computed (incompatible tensors, bad coefficients, empty task set)."""


class ImportCheckError(SammergeError):
    """An import found problems; ``problems`` lists each (file, tensor or field, what is wrong), all at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) found, nothing written:\n  - " + "\n  - ".join(self.problems))


def invalid_fields(exc, what: str = "field") -> str:
    """Every problem of a pydantic ``ValidationError`` in one line: "invalid field 'a.b': msg; invalid field …"."""
    return "; ".join(f"invalid {what} '{'.'.join(str(p) for p in e['loc']) or '(root)'}': "
                     f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
