"""Request and response models of the HTTP API, every field documented with its unit, one module
per route family: :mod:`~service.schemas.chips` (programming, chips, the zoo),
:mod:`~service.schemas.inference`, :mod:`~service.schemas.evaluation` (evaluation, drift),
:mod:`~service.schemas.oip` (Open Inference Protocol v2),
:mod:`~service.schemas.ops` (health), :mod:`~service.schemas.errors` (error bodies and the
responses routes declare), and :mod:`~service.schemas.common` (what they share). Every name is
importable from ``service.schemas``.

Ages are seconds after programming, or a duration string (see :mod:`service.durations`).
Accuracies and other ratios are in [0, 1]. Conductances are µS.
"""

from service.schemas.chips import (
    ChipCost,
    ChipList,
    ChipListEntry,
    ChipSummary,
    LayerInfo,
    ModelInfo,
    ProfileInfo,
    ProgramJson,
    TensorInfo,
    ZooList,
    ZooModel,
)
from service.schemas.common import (
    AGE_DOC,
    ESTIMATE_DOC,
    GDC_DOC,
    GDC_MODES,
    GDC_ON_MODES,
    AgeValue,
    GdcOption,
    inline_schema,
)
from service.schemas.errors import (
    ERROR_RESPONSES,
    INTERNAL_ERROR,
    OIP_ERROR_RESPONSES,
    UNSUPPORTED_MEDIA,
    ErrorDetail,
    ErrorResponse,
    FieldError,
    OipErrorResponse,
)
from service.schemas.evaluation import (
    AccuracyStats,
    AgeAccuracy,
    DriftLayer,
    DriftResponse,
    EvaluateRequest,
    EvaluateResponse,
    SloBreach,
)
from service.schemas.inference import InferRequest, InferResponse, LayerAlpha
from service.schemas.oip import (
    OIP_DATATYPES_DOC,
    OipInferRequest,
    OipInferResponse,
    OipLive,
    OipModelMetadata,
    OipModelReady,
    OipOutputTensor,
    OipReady,
    OipRequestedOutput,
    OipServerMetadata,
    OipTensor,
    OipTensorMeta,
)
from service.schemas.ops import Health

__all__ = [
    "GDC_MODES",
    "GDC_ON_MODES",
    "GdcOption",
    "AgeValue",
    "AGE_DOC",
    "GDC_DOC",
    "ESTIMATE_DOC",
    "inline_schema",
    "FieldError",
    "ErrorDetail",
    "ErrorResponse",
    "OipErrorResponse",
    "ERROR_RESPONSES",
    "OIP_ERROR_RESPONSES",
    "INTERNAL_ERROR",
    "UNSUPPORTED_MEDIA",
    "ProgramJson",
    "ModelInfo",
    "ProfileInfo",
    "LayerInfo",
    "TensorInfo",
    "ChipCost",
    "ChipSummary",
    "ChipListEntry",
    "ChipList",
    "ZooModel",
    "ZooList",
    "InferRequest",
    "LayerAlpha",
    "InferResponse",
    "EvaluateRequest",
    "AccuracyStats",
    "AgeAccuracy",
    "SloBreach",
    "EvaluateResponse",
    "DriftLayer",
    "DriftResponse",
    "Health",
    "OIP_DATATYPES_DOC",
    "OipTensor",
    "OipRequestedOutput",
    "OipInferRequest",
    "OipOutputTensor",
    "OipInferResponse",
    "OipTensorMeta",
    "OipModelMetadata",
    "OipServerMetadata",
    "OipLive",
    "OipReady",
    "OipModelReady",
]
