"""Models: the catalog of labs, frontiers and analogs (:mod:`.catalog`), analog cards
(:mod:`.card`), release bundles (:mod:`.bundle`) and loading checkpoints (:mod:`.loading`).

Everything but :mod:`.loading` is metadata only and imports no torch.
"""
