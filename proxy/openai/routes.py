"""Every OpenAI-compatible route (`/v1/*`), and Anthropic's Messages routes, for the app to mount."""

from proxy.openai.chat import chat_completions, completions
from proxy.openai.embeddings import embeddings
from proxy.openai.models import list_models, retrieve_model
from proxy.openai.passthrough import count_tokens, messages, responses
from proxy.openai.rerank import rerank

ROUTES = [chat_completions, completions, embeddings, rerank, list_models, retrieve_model, responses, messages,
          count_tokens]
