"""Process management, apart from the serving path (which never imports it): the launcher behind `python -m service`
and its start-up checks, the embedded Redis, the gunicorn configuration and the gunicorn worker class."""
