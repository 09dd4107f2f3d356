"""Experiments built from the library: the embedded demo run (:mod:`.demo`), the UniRep
distillation preset (:mod:`.unirep_preset`, :mod:`.preset_report`) and the settings sweep
(:mod:`.sweep`). The core library never imports this package."""
