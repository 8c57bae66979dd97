"""The op vocabulary: each group of TensorFlow op types that frontends, analyses and passes test, defined once."""

# Ops that multiply matrices: dense layers and attention's two products, in every exporter's spelling.
MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum", "_FusedMatMul")
# Calls of library functions: a TF2 SavedModel's computation sits in the functions they call.
CALL_OPS = ("StatefulPartitionedCall", "PartitionedCall")
# A variable's own node: TF1 RefVariables (VariableV2, the older Variable) and TF2 resource handles.
VARIABLE_OPS = ("VariableV2", "Variable", "VarHandleOp")
# Ops that hand their input on unchanged when serving: what `through_identity` steps over unless told otherwise.
IDENTITY_OPS = ("Identity", "StopGradient")
# Ops that pass a tensor through unchanged, training and debugging checks included: what removal may bypass.
PASS_THROUGH_OPS = (*IDENTITY_OPS, "CheckNumerics", "Snapshot", "PreventGradient")
# Ops that change only a tensor's shape: its elements stay, in the same order.
RESHAPE_OPS = ("Reshape", "ExpandDims", "Squeeze")
# Ops that move or relabel elements without computing: what a walk between two computing ops steps over.
LAYOUT_OPS = (*RESHAPE_OPS, "Transpose", "Identity", "Cast")
# Ops whose output is a constant when their inputs are: reads, casts and reshapes of a weight.
CONSTANT_PRESERVING_OPS = (*PASS_THROUGH_OPS, "ReadVariableOp", *LAYOUT_OPS)
