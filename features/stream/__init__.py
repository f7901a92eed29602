"""Box 2, streaming half: the Flink SQL job that turns Kafka events into session features.

`sql` generates the job's SQL from `features.specs`; `job` builds and submits it; `control`
starts, stops, restarts (from the latest checkpoint) and reports on it through Flink's REST API.
"""
