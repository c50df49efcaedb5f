"""Running the relay: the admin HTTP listener (metrics, health, timeline API), the Prometheus
telemetry read from each component's stats, the start-up checks, rate-limited log lines."""
