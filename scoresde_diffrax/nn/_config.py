import dataclasses
from typing import Any


def freeze(value: Any) -> Any:
    """Lists (from JSON) back to tuples, recursively, so configs stay hashable."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a network's hyperparameters (a frozen dataclass)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
