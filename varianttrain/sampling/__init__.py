"""Next-scale sampling: one KV-cached loop, acceleration methods plug in as strategies."""
