"""An app factory for ASGI servers run by hand (`uvicorn --factory proxy.asgi:app`), configured
from the config file and the environment like `llamagate serve`."""

from litestar import Litestar

from proxy.app import create_app
from supervisor.config import Config


def app() -> Litestar:
    return create_app(Config.load())
