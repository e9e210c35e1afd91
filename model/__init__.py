"""HashGNN model, data pipeline, training and evaluation (imported as ``hashrec.model``)."""
