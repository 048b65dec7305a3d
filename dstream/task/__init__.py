"""One attempt of a pipeline of N stages, restarts, leases in use, status, metrics,
background runs and lifecycle verbs."""
