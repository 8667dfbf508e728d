"""What the Kubernetes deployment runs inside JupyterHub (see ``docs/kubernetes.md``).

- :mod:`.profiles`: KubeSpawner profiles restricted to groups, enforced at spawn;
- :mod:`.kubehub`: the hub's configuration on Kubernetes (our services, scopes, roles,
  notebook environment, kernel culling), loaded by the official JupyterHub chart's
  ``hub.extraConfig`` from ``helm/values/jupyterhub.yaml``.

Neither imports KubeSpawner or JupyterHub: they build plain data the hub applies.
"""
