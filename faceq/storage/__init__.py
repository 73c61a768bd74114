"""Storage (file:// or S3), the allow-list of input roots, safe local file reads."""
