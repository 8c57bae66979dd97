"""The IR: a weight-free GraphDef + weights (graph), TensorFlow imported quietly (lazy), the serving names."""
