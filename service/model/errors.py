"""Errors of the model layer, free of any protocol."""


class ModelLoadError(RuntimeError):
    """The model cannot be served: missing, unreadable, corrupt, or not what the service expects."""


class ExplainUnavailable(RuntimeError):
    """The graph is not one whose LSTM weights the explanation can read."""
