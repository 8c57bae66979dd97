"""A composed config -> a Plan -> one compile: config, plan, pipeline, the entry points (cli, api, usage), a sweep's
job on a Ray node (cluster) and a run rebuilt and compared (reproduce)."""
