"""An existing gevent WSGI app that runs a goverse node in its own process."""
