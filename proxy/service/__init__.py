"""llamagate as a long-running service: the service manager's notify protocol, draining on
SIGTERM, and the log's format."""
