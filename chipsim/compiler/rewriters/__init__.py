"""Per-op rewriters: the registry and one module per op family (importing a module registers
its rewriters)."""

# Importing a module registers its rewriters: MatMul, Gemm (matmul); Conv, ConvTranspose (conv);
# LSTM, GRU, RNN (recurrent_cells).
from chipsim.compiler.rewriters import conv, matmul, recurrent_cells  # noqa: F401
from chipsim.compiler.rewriters.registry import (
    REWRITERS,
    UNMAPPABLE,
    OpRewriter,
    RewriteContext,
    node_attrs,
    register,
    rewriter_of,
)

__all__ = ["REWRITERS", "UNMAPPABLE", "OpRewriter", "RewriteContext", "node_attrs", "register", "rewriter_of"]
