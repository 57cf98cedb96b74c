"""The injection webhook: kopf ``on.mutate`` handler, HTTPS server, certificates, and its CLI.

Modules: ``handlers`` (the kopf registry: indexes of TunGateways and Namespaces + the mutate handler,
all feeding tungo_operator.injection.core.decide), ``review`` (pure AdmissionReview shape checks),
``server`` (kopf.WebhookServer with those checks in front), ``certs`` (CA + serving certificate with
``cryptography``), ``app`` (the ``tungo-webhook`` command). It reads the cluster, never writes to it.
"""
