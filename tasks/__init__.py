"""What work is done: the reconcile actor, one reconciler per kind, AWS and Kubernetes adapters."""
