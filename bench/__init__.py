"""faceq benchmarks: each prints one JSON document; ``--record`` appends it to RESULTS.md."""
