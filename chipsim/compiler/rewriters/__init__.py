"""Per-op rewriters: the registry and one module per op family (importing a module registers
its rewriters)."""

from chipsim.compiler.rewriters import conv, matmul  # noqa: F401  (registers MatMul, Gemm, Conv)
from chipsim.compiler.rewriters.registry import (
    REWRITERS, UNMAPPABLE, OpRewriter, RewriteContext, node_attrs, register, rewriter_of,
)

__all__ = ["REWRITERS", "UNMAPPABLE", "OpRewriter", "RewriteContext", "node_attrs", "register", "rewriter_of"]
