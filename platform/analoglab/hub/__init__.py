"""The platform on one machine: JupyterHub with every Analog Lab service (``analoglab up``).

- :mod:`.config`: the pure builder of ``jupyterhub_config.py`` from a :class:`~.config.Plan`.
- :mod:`.layout`: where the platform keeps its state under the data folder.
- :mod:`.platform`: the side effects of ``up``: secrets, the hub process, readiness, shutdown.
- :mod:`.spawn`: the hooks the hub runs when it starts a user's server.
- :mod:`.users`: hub users, their passwords, groups and OS accounts.
- :mod:`.status`: what runs and where (``analoglab status``).
- :mod:`.commands`: the ``up``, ``status`` and ``users`` commands.
"""
