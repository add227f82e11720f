"""What a run leaves on disk: its workdir (the lock, config.json, metrics.jsonl, summary.json:
`workdir`), its Orbax checkpoints, sealed with their digests (`checkpoint`), and the typed records
it writes per epoch and at the end (`metrics`). Training, searches and inference read and write
runs only through these, and nothing here computes a result."""
