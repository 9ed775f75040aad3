"""Documents, loaders, embedding and the index stores of both retrieval backends."""
