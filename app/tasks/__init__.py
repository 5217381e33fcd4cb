"""Celery entry points: thin wrappers over services, arguments are ids and primitives."""
