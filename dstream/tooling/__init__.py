"""For provider authors and operators: conformance suite, scaffold, catalogue, image
builds, config schemas, Swarm/Kubernetes deploy."""
