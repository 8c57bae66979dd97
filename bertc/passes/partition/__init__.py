"""The partition feature (config group `partition`: none, cpu_embed): the graph split into a host part pinned to
the CPU (embedding lookups, mask bias) and a device part (encoder, pooler, classifier).

- partition_graph: the pass (`PASS`) and its parameters (`PartitionParams`, which refuse a boundary named twice):
  resolves the boundary specs and aliases, marks each crossing, pins the host part to `host_device`.
- contract: what the pass writes and the others read (BOUNDARY_PREFIX, Boundary, boundary_nodes, boundaries_of,
  split_partition); no pass. The targets cut there (targets/serving.py, xla.py, stablehlo.py), the driver
  reports the crossings (driver/pipeline.py `rewrite`).

Elsewhere, by design: conf/partition/ (the options); driver/pipeline.py `target_options` hands `host_device` to the
targets; the host part's NumPy recipe (runtime/manifest.py HostRecipe, runtime/portable.py compute_host) belongs to
the stablehlo artifact's format, which the TensorFlow-free runtime reads without any bertc stage.
"""

PASSES = ("partition_graph",)  # the modules that declare a PASS (bertc/passes/__init__.py discovers them)
