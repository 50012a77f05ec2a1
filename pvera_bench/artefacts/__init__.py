"""What a run leaves in the results folder and who owns its names (:mod:`~pvera_bench.artefacts.layout`): the
result's provenance, the stored predictions, the adapter file, its PEFT export and the hub upload."""
