"""Exception types shared across the package. Every message names the input and what was wrong."""


class SpatialT2IError(Exception):
    """Base class for the package's user-facing errors."""


class SpecError(SpatialT2IError, ValueError):
    """A scene spec names an unknown shape, colour, size, relation or object, or is malformed."""


class UnsatisfiableSceneError(SpatialT2IError):
    """The layout solver found no placement satisfying every relation of a spec."""


class ConfigError(SpatialT2IError, ValueError):
    """A configuration file or value is malformed."""


class DatasetError(SpatialT2IError):
    """A dataset folder is missing, incomplete, or not a pair dataset."""


class EndpointError(SpatialT2IError):
    """A remote endpoint (LLM, judge, reward server) is unreachable or answered badly."""


class MalformedAnswer(ValueError):
    """A judge's answer that does not follow its protocol; ``reason`` says how (the judge is asked again)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
