"""Adapters that put a balanced embedding client where users already are.

- :mod:`embedbalance.integrations.langchain` — ``EmbedbalanceEmbeddings``, a LangChain
  ``Embeddings`` (extra ``langchain``);
- :mod:`embedbalance.integrations.llamaindex` — ``EmbedbalanceEmbedding``, a LlamaIndex
  ``BaseEmbedding`` (extra ``llamaindex``).

Each module imports its framework, so nothing here is imported by ``import
embedbalance``; the OpenAI SDK needs no adapter at all (its ``http_client`` takes an
``httpx.Client`` whose transport is a :class:`~embedbalance.BalancingTransport`; see
``docs/integrations.md``).
"""
