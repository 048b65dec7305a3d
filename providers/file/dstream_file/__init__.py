"""file-output-provider (append envelopes to JSONL, ack after flush/fsync) and
file-input-provider (replay a JSONL file with byte-offset checkpoints)."""
