"""tokenwire: real-time AI chat streaming over Socket.IO.

The package is layered; each folder is one layer and imports only downwards:

    wire/       Socket.IO namespace /ai: payload models, event handlers
    api/        HTTP routes (FastAPI): conversations, health
    chat/       the chat service: turns, running replies, prompts
    providers/  upstream model servers (OpenAI-compatible HTTP, demo)
    storage/    SQLAlchemy models, repository, Alembic migrations

`app.create_app(settings)` wires them together; `cli` is the command line.
"""

__version__ = "0.1.0"
