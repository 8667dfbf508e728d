"""The demo foundry: a miniature of a lab's side, built on this machine from nothing.

A toy-world corpus with ground truth (:mod:`.world`, :mod:`.corpus`, :mod:`.tasks`), a BPE
tokenizer (:mod:`.tokenizer`), a frontier trained from scratch and analogs distilled from it
(:mod:`.training`), their fidelity (:mod:`.fidelity`), all driven by a preset
(:mod:`.presets`) through :mod:`.build`.
"""
