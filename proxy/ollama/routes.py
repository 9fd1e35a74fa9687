"""Every route of Ollama's native API, for the app to mount."""

from proxy.ollama.generation import chat, embed, embeddings, generate
from proxy.ollama.models import blob_exists, blob_upload, copy, create, delete, ps, pull, root, show, tags, version

ROUTES = [root, version, tags, chat, generate, blob_exists, blob_upload, create, copy, delete, show, ps, embed,
          embeddings, pull]
