"""Retrieval: sentence embeddings, document chunking and an embedded LanceDB vector index.

Sits above ``models``/``data`` and below ``baselines`` (the ICL baseline picks nearest
demonstrations with :class:`Embedder`; the RAG baseline queries an index).
"""
