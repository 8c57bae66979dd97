"""What a run leaves and what reads it back: run folder, faults, report and its schema, sweep summary, diff, digests."""
