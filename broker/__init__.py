"""NDXP gateway side: settings, Kafka helpers, local Kafka, gateway, counter."""

__version__ = "0.1.0"
