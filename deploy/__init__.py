"""Running the service beyond one process: Kubernetes and KServe manifests (``kubernetes/``), and a fleet of
replicas behind HAProxy on one machine (``fleet.py``)."""
