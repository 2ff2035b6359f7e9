"""The errors svigraph raises (defined in ``compiler.errors``, re-exported for users)."""

from compiler.errors import (DuplicateSiteError, EnumerationError, ModelGuideMismatchError, NonFiniteLossError,  # noqa: F401
                             ParamError, PlateError, ShapeMismatchError, SupportError,
                             SvigraphError, TracingError)
from compiler.baselines import BaselineError  # noqa: F401
from compiler.errors import MeanFieldError, ObservationError  # noqa: F401
from compiler.errors import EnumerationWarning, SvigraphWarning  # noqa: F401
from svigraph.serialization import UnsafeFileError  # noqa: F401
