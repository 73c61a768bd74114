"""The broker side: URL checks, reference-only task messages, worker heartbeats."""
