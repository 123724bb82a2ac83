"""The index: ChromaDB shards (dense vectors) and the BM25 lexical index, built by ingest.

- :mod:`~sparkrag.index.layout`: shard count, ``crc32(doc_id) % N`` routing, versioned
  folders and the manifest that publishes them atomically;
- :mod:`~sparkrag.index.vectorstore`: Chroma clients, collections, writes and checks;
- :mod:`~sparkrag.index.build`: one shard built by its only writer, inside a Spark task;
- :mod:`~sparkrag.index.sync`: which shards changed, their build tasks, the publish;
- :mod:`~sparkrag.index.shards`: opening the published shards for queries (in place or
  shipped to executors);
- :mod:`~sparkrag.index.lexical`: the BM25 index (bm25s), versioned the same way;
- :mod:`~sparkrag.index.exact`: brute-force search over the chunks table's vectors;
- :mod:`~sparkrag.index.where`: the ``where`` / ``where_document`` filter language all
  three evaluate identically.

Nothing here imports chromadb or bm25s at module level.
"""
