"""Thin route modules: parse and validate the request, call the service logic, shape the answer."""
