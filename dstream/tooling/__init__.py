"""For provider authors and operators: conformance suite, scaffold, catalogue, image
builds, config schemas, ``dstream lint``, Swarm/Kubernetes deploy."""
