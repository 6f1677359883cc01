"""Domain errors raised by the scoring core. The service maps each class to an HTTP status in one table."""

from __future__ import annotations

# What to do when the optional vLLM engine is asked for and missing (the setting and the start-up both say it).
VLLM_SETUP = "install it with scripts/setup-vllm.sh and run from .venv-vllm (.venv-vllm/bin/armo serve)"


class ArmoError(Exception):
    """Base class; `field` names the offending input when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InputError(ArmoError):
    """The caller's input is invalid (wrong roles, empty text, unknown objective …)."""


class InputTooLongError(InputError):
    """A sequence exceeds the token limit and cannot be truncated under the policy."""


class NonFiniteScoreError(InputError):
    """The input (e.g. extreme steering weights) drove this item's score out of the floating-point range."""


class ArtifactError(ArmoError):
    """An artifact is missing, corrupt, partial, or does not match the loaded backbone."""


class StoreError(ArmoError):
    """A model-store operation cannot be done (unknown model/version/alias, version exists …)."""


class ModelNotLoadedError(ArmoError):
    """No model is loaded yet."""
