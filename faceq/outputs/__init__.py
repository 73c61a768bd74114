"""What a job writes: Parquet rows, summary, review queue, report, verdicts, guidance."""
