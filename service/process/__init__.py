"""Process management: the gunicorn configuration and worker class. Apart from the serving path, which never
imports it."""
