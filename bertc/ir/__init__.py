"""The IR: a weight-free GraphDef + weights (graph), the op vocabulary (ops), TensorFlow imported quietly (lazy),
the serving names (signature)."""
