"""An OpenAI-compatible embeddings server over any text backbone: black-box NMTune, locally.

``make_server(backbone, ...)`` answers ``POST /v1/embeddings`` and ``GET /v1/models`` the way a
hosted embeddings API does, so a study whose backbone is ``openai:MODEL`` (the
:class:`~nmtune.backbones.OpenAIEmbeddings` adapter) sees nothing of the model but the vectors
it returns. Requests are validated like OpenAI's (the same error body,
``{"error": {"message", "type", "param", "code"}}``, for every error, HTTP-level ones
included); ``encoding_format`` may be ``"float"`` or ``"base64"`` (little-endian float32, what
the official Python client asks for).

It holds up as a service (every bound is a :class:`ServerLimits` field and a CLI flag):

- *Bounded requests.* A body over ``max_body_bytes`` is answered 413 before it is read; more
  than ``max_inputs`` inputs, or an input over ``max_input_chars`` characters, 400 (OpenAI
  refuses over-long inputs the same way). Within that, the backbone truncates each input to
  its own maximum sequence length (``max_seq_length`` tokens for sentence-transformers
  models): text beyond it does not change the embedding.
- *Bursts.* A listen backlog of :attr:`EmbeddingServer.request_queue_size`, ``workers``
  threads serving connections and a queue of ``queue_size`` accepted connections; when that
  queue is full a connection is answered 503 with ``Retry-After`` at once, never dropped.
- *Slow clients.* A request's line and headers must arrive within ``header_timeout`` seconds
  and its body within ``body_timeout``; a slow client is answered 408 and disconnected.
- *One model, shared passes.* A single thread runs the backbone; requests that arrive while
  it is busy are coalesced into the next forward pass (at most ``max_batch_inputs`` texts,
  shared equally among the waiting requests, sorted by length), so a burst of small requests
  costs a few passes, not one each, a small request is not stuck behind a big one, and a
  lone request waits for nobody. A batched model may differ in the last bits with batch
  composition, as in any batched inference.
- *Closing politely.* A connection closed with unread input would be reset, losing the
  answer; so the server stops writing, reads what the client still sends (for up to
  :data:`~nmtune.serve.connections.LINGER_SECONDS`) and only then closes.
"""

from .requests import MAX_INPUTS, REQUEST_FIELDS, APIError, ServerLimits
from .server import EmbeddingServer, make_server

__all__ = ["MAX_INPUTS", "REQUEST_FIELDS", "APIError", "EmbeddingServer", "ServerLimits",
           "make_server"]
