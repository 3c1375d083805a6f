"""One codec per client API: parse its contract into the gateway's call shape
(:class:`router.inbound.base.ClientCall`), render its answers, streams and
errors back. :func:`router.inbound.registry.openai_codecs` makes the set the
app serves."""
