"""A composed config -> a Plan -> one compile: config, plan, pipeline, the entry points (cli, api, usage)."""
