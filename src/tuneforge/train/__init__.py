"""What every stage shares: the output folder rules, callbacks (JSONL log, token speed), artifacts."""
