"""An app factory for `--factory`: the server must call `create_app()` to get the app."""

from raw_apps import App, Receive, Scope, Send, http_only, respond


def create_app() -> App:
    """Build and return an app whose response body names the factory."""

    @http_only
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"made by the factory")

    return app
