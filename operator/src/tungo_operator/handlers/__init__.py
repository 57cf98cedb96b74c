"""The controller's I/O shell: kopf handlers (``controller``), the reconcile steps (``reconcile``) and a
small Kubernetes API client (``kube``). Only ``controller`` imports kopf; decisions are made by the
pure ``model`` and ``render`` layers.
"""
