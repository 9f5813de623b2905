"""The classic builder (POST /build): the context, COPY/ADD, the steps, the cache."""
