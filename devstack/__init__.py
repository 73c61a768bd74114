"""Dev and test machinery (not installed): a private redis-server, worker processes, the demo."""
