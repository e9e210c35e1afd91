"""Binary index export, bundles and the two-stage Retriever (imported as ``hashrec.index``)."""
