"""The `length` step (full, trim, buckets, pack): run only the real tokens. One feature, all of it here.

    contract.py              the names the step gives the nodes it adds (LENGTH, SEQ, SIZES, PACK_INDEX, ...;
                             their scopes are bertc.ir.graph's LENGTH_SCOPE and PACK_SCOPE, which the analysis
                             reads too) and how a graph is read there: cut_name, is_length_polymorphic, is_packed,
                             token_step_of, split_length (the length part and the body), bucket_sizes_of, at_width.
                             Read by the step, partition_graph (the pack mask crosses) and the targets
    trim_sequence_length.py  the pass (PASS): cut the serving inputs to the batch's longest real row, or its
                             bucket, and every shape that baked in S; with pack, then pack_tokens
    pack_tokens.py           length=pack: the real tokens of every row in one [T, H] matrix between the layers
    modes.py                 which mode a target can run (check_length_target, from the plan), the (L, T) shapes
                             a static-shape target compiles for pack (pack_shapes), and what a run records
                             (length_record, record_lengths_ran: the driver's pipeline)
    dispatch.py              the serving function's length stage (LengthStage: the cut, or a switch into one
                             branch per bucket), the pack index split out of an XLA function, the warm-ups:
                             bertc/targets/serving.py and xla.py (TensorFlow; not imported by pass discovery)
    rule.py                  the rule in NumPy (batch_length), for bertc/runtime/ and target=stablehlo: NumPy only

The targets import the contract and the dispatch, never the rewrite. Realistic length mixes for bench and the
checks (length_mix, synthetic_feeds) are bertc/evaluate/lengths.py. This file imports nothing: the runtime's import
of rule.py loads no other module of the feature.
"""

PASSES = ("trim_sequence_length",)  # the modules that declare a PASS (bertc/passes/__init__.py discovers them)
