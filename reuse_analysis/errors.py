"""Exceptions that describe bad input; the CLI turns each into one ``Error:`` line and exit 2."""


class ReuseAnalysisError(Exception):
    """Bad input the user can fix; the message says what is wrong and what to do."""


class CheckpointError(ReuseAnalysisError):
    """The file cannot be read as a checkpoint, or holds no usable weights."""


class StructureError(ReuseAnalysisError):
    """The weights do not describe a DenseNet this toolkit understands."""


class OutputError(ReuseAnalysisError):
    """An output file cannot be written (a full disk, a folder without write permission)."""
