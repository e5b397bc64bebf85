"""Statistics for reader studies and cohorts (no imaging imports)."""
