"""The one error a model load raises: it names the file, the tensor or the memory involved."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The base model cannot be loaded as asked (bad files, a tensor that does not fit, too little memory)."""


class UnitRangeError(ModelLoadError):
    """A weight does not fit the int32 master at the fixed-point unit asked for."""
