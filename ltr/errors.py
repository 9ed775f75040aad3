"""Exception hierarchy of the ltr package; callers map these to exit codes / HTTP statuses."""


class LTRError(Exception):
    """Base class for every error raised by ltr."""


class UnknownNameError(LTRError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class FeaturesetMismatchError(LTRError):
    """A model was trained on a different ordered feature list than the code defines."""


class ModelNotFoundError(LTRError):
    """No model (or no promoted model) where one was asked for."""


class CorruptModelError(LTRError):
    """A model version's files are unreadable: a broken manifest, or a booster file that
    fails its checksum or that XGBoost cannot parse. Such a version is never served."""


class TrainingDataError(LTRError):
    """Training data is empty, degenerate or inconsistent."""


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> UnknownNameError:
    """Build the standard 'unknown X; valid: ...' error of every registry."""
    return UnknownNameError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")


class RolloutError(LTRError, ValueError):
    """A rollout statistic got invalid input (a probability outside (0, 1), a negative
    count, a clicked position that was not shown, a log without the needed columns)."""
