"""Every route of Ollama's native API, for the app to mount."""

from proxy.ollama.chat import chat, generate
from proxy.ollama.embed import embed, embeddings
from proxy.ollama.models import blob_exists, blob_upload, copy, create, delete, ps, root, show, status, tags, version
from proxy.ollama.pull import pull, push
from proxy.ollama.rerank import rerank

ROUTES = [root, version, status, tags, chat, generate, blob_exists, blob_upload, create, copy, delete, show, ps, embed,
          embeddings, rerank, pull, push]
