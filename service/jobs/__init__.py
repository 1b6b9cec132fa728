"""Training jobs: a durable queue in the registry database, leases, retries and fair claiming."""
