"""The FastAPI recommendation service (imported as ``hashrec.service``)."""
