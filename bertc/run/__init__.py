"""What a run leaves and what reads it back: run folder, faults, report, sweep, reproduce, diff, digests."""
