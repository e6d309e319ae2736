"""Fast GPU paths: one op per file, each with its PyTorch reference, its Triton kernel(s), its
autograd function where it has one, and its tuning table.

Convention (every op): the public function always returns the op's result. It runs the
kernel when the op's ``*_applies`` predicate holds and otherwise its ``*_reference``, the plain
PyTorch definition the kernel is tested against (``tests/ops``). Predicates never raise and
start with :func:`available` (the switch, Triton installed, a CUDA tensor or
``TRITON_INTERPRET=1``); most also require no autograd (inference kernels). Results equal
the reference up to floating-point rounding (summation order, float32 intermediates).

The switch: :func:`set_enabled` (``MODEL.OVSEG.FAST_OPS``) or ``SED_D2_FAST_OPS=0`` in the
environment turns every Triton path off, so everything runs as plain PyTorch
(:mod:`.runtime`). Dtype and availability helpers live in :mod:`.runtime` only.

Also here, because the kernels depend on them: :mod:`.parameter_cache` (weights the kernels
derive from parameters, once per parameter version) and :mod:`.cuda_graphs` (inference replayed
from CUDA graphs; its cache keys include those versions). :mod:`.resize` is a matrix
product formulation of an op with its own backward, plain PyTorch.
"""

from .resize import bilinear_resize, bilinear_resize_matrix
from .class_linear_attention import (
    class_linear_attention_reference,
    fused_class_linear_attention,
    fused_class_linear_attention_applies,
    linear_attention,
)
from .conv3x3 import conv3x3_no_bias, conv3x3_no_bias_applies, conv3x3_no_bias_reference
from .conv_transpose import conv_transpose_2x2, conv_transpose_2x2_applies, conv_transpose_2x2_reference
from .cuda_graphs import CUDAGraphCache, graph_key
from .depthwise_conv import depthwise_conv2d, depthwise_conv2d_applies, depthwise_conv2d_reference
from .group_norm import fused_group_norm, fused_group_norm_applies, group_norm_reference
from .head_conv import single_output_conv2d, single_output_conv2d_applies, single_output_conv2d_reference
from .layer_norm_mlp import fused_layer_norm_mlp, fused_layer_norm_mlp_applies, layer_norm_mlp_reference
from .parameter_cache import derived_from_parameters
from .row_norm import fold_layer_norm_into_linear, normalize_rows, normalize_rows_applies, normalize_rows_reference
from .runtime import available, enabled, set_enabled

__all__ = [
    "CUDAGraphCache",
    "available",
    "bilinear_resize",
    "bilinear_resize_matrix",
    "class_linear_attention_reference",
    "conv3x3_no_bias",
    "conv3x3_no_bias_applies",
    "conv3x3_no_bias_reference",
    "conv_transpose_2x2",
    "conv_transpose_2x2_applies",
    "conv_transpose_2x2_reference",
    "depthwise_conv2d",
    "depthwise_conv2d_applies",
    "depthwise_conv2d_reference",
    "derived_from_parameters",
    "enabled",
    "fold_layer_norm_into_linear",
    "fused_class_linear_attention",
    "fused_class_linear_attention_applies",
    "fused_layer_norm_mlp",
    "fused_layer_norm_mlp_applies",
    "graph_key",
    "fused_group_norm",
    "fused_group_norm_applies",
    "group_norm_reference",
    "layer_norm_mlp_reference",
    "linear_attention",
    "normalize_rows",
    "normalize_rows_applies",
    "normalize_rows_reference",
    "set_enabled",
    "single_output_conv2d",
    "single_output_conv2d_applies",
    "single_output_conv2d_reference",
]
