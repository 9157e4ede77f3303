"""NDXP adapter side: the runtime that serves provider agencies over Kafka."""
