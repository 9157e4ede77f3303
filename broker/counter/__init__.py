"""Transaction records and exact counting: recorder (gateway), counter, stats view."""
