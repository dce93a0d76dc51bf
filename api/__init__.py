"""The HTTP API (Falcon on gunicorn): resources per kind, auth, errors, OpenAPI."""
