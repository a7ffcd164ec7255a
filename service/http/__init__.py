"""The HTTP layer: the only part of the service that knows Flask. Start at `app.create_app`."""
