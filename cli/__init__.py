"""The ``threeport`` command: client verbs, operator verbs over NATS, and ``up``."""
