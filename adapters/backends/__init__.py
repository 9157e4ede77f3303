"""Agencies' own REST backends (simulated), which forwarding adapters call."""
